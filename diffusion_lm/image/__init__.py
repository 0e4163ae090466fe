"""Latent diffusion for images on the shared core: captioned shapes, an exact pixel oracle, a KL
autoencoder, a CLIP pair trained here, a cross-attention UNet, and the image pipeline.

Modules (each readable in one sitting):
    shapes.py       the scene grammar: Obj(shape, colour, size, position), Scene(objects, relation);
                    render(scene, rng) -> uint8 (32, 32, 3); caption(scene) -> str;
                    parse_caption(str) -> Scene (UserError naming an unknown word or an undrawable caption);
                    VOCAB, the closed caption vocabulary
    oracle.py       read_scene(image) -> Scene | None from pixels alone (palette segmentation,
                    connected components, shape from geometry, size from area, position from the
                    centroid); matches(image, caption) -> dict of per-attribute and whole-caption hits
    data.py         seeded train / valid / test / heldout splits as `datasets.Dataset`
                    (columns: image uint8 HxWx3 array, caption str); the held-out composition split
                    holds shape-colour pairs and relations never rendered in train
    autoencoder.py  KL autoencoder (LDM first stage): 32x32x3 <-> 8x8x4, latents scaled to unit variance
    clip.py         CLIP pair: image encoder + caption transformer, InfoNCE; the frozen text tower's
                    token states condition the UNet; embeddings give the CLIP score
    unet.py         UNet with timestep scale-shift ResBlocks, self- and cross-attention at low resolution
    train.py        trainers for the three models, each on `diffusion_lm.training.fit`
    ../pipelines/image.py  ImagePipeline: caption -> CLIP token states -> core.sample(UNet wrapped by
                    classifier-free guidance, x0_transform = thresholding) -> decoder -> pixels
    evaluate.py     oracle accuracy per attribute and whole caption, CLIP score, Fréchet distance in
                    the CLIP image tower's feature space, the guidance-weight sweep, grids

Images are float tensors in [-1, 1], shape (B, 3, H, W), inside models; uint8 HxWx3 on disk and in
datasets. Every model saves through `diffusion_lm.io.save_pretrained` (config.json +
model.safetensors) and trains through `diffusion_lm.training.fit`.
"""
