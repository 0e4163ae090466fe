"""The unCLIP pipeline (DALL·E 2): caption -> CLIP text embedding -> prior -> image embedding -> decoder -> image.

    pipe = UnCLIPPipeline.from_pretrained("runs/image-prior", "runs/image-unclip-decoder")
    images = pipe("a small red circle at the top left", n=8, guidance=2)   # uint8 (8, 32, 32, 3)
    variations = pipe.variations(images[:1], n=8)                          # from the image's own embedding

The decoder is an image UNet whose one context token is the image embedding (image/unclip.py), so this is
the image pipeline with another conditioning: the prior's samples (or an image's embedding) in place of
the caption's token states, a zero token as ∅, and the same core sampler, guidance and decoding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..assets import resolve_asset
from ..errors import UserError
from ..image.clip import ClipModel
from ..image.shapes import parse_caption
from ..image.unclip import (DiffusionPrior, embedding_context, image_embeddings, read_conditioning, sample_prior)
from ..image.autoencoder import load_autoencoder
from ..image.unet import UNet, fingerprint, images_to_tensor, load_diffusion, tensor_to_images
from .image import ImagePipeline, _check_counts, check_guidance
from ..runtime import pick_device


class UnCLIPPipeline(ImagePipeline):
    context = "image_embedding"

    def __init__(self, prior: Optional[DiffusionPrior], prior_diffusion, decoder: UNet, diffusion, clip,
                 autoencoder=None, device: str = "cpu"):
        """`prior` may be None for variations alone."""
        super().__init__(decoder, diffusion, clip, autoencoder, device)
        self.prior, self.prior_diffusion = prior, prior_diffusion
        if prior is None:
            return
        want = prior.config.clip_fingerprint
        if want is not None and want != fingerprint(clip):
            raise UserError(f"the prior maps between another CLIP pair's embeddings (fingerprint {want}, this one "
                            f"{fingerprint(clip)}); use the CLIP it was trained with")
        if prior.config.embed_dim != decoder.config.context_dim:
            raise UserError(f"the prior samples embeddings of width {prior.config.embed_dim} but the decoder reads "
                            f"{decoder.config.context_dim}")
        prior.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, prior_dir: Optional[str], decoder_dir: str, autoencoder_dir: Optional[str] = "shipped",
                        clip_dir: str = "shipped", device: str = "auto") -> "UnCLIPPipeline":
        """Folders from `train-prior` and `train-unet unet_preset=cpu_decoder` (or `shipped` for the
        shipped pair, `image-prior` and `image-unclip-decoder`); no prior (None) for variations alone."""
        device = str(pick_device(device))
        decoder_path = resolve_asset(decoder_dir, "model", "image-unclip-decoder")
        if read_conditioning(decoder_path) != "image_embedding":
            raise UserError(f"{decoder_path} is a caption UNet, not an unCLIP decoder (train one with "
                            f"`diffusion-lm train-unet unet_preset=cpu_decoder`)")
        prior, prior_diffusion = None, None
        if prior_dir is not None:
            prior_path = resolve_asset(prior_dir, "model", "image-prior")
            prior, prior_diffusion = DiffusionPrior.from_pretrained(prior_path, device=device), load_diffusion(prior_path)
        decoder = UNet.from_pretrained(decoder_path, device=device)
        autoencoder = None
        if decoder.config.space == "latent":
            autoencoder = load_autoencoder(resolve_asset(autoencoder_dir, "model", "image-autoencoder")).to(device)
        clip = ClipModel.from_pretrained(resolve_asset(clip_dir, "model", "image-clip")).to(device)
        return cls(prior, prior_diffusion, decoder, load_diffusion(decoder_path), clip, autoencoder, device)

    # ---- the two ways in: a caption through the prior, or an image's own embedding ------------------
    @torch.no_grad()
    def image_embeddings(self, captions: Sequence[str], n: int = 1, *, prior_guidance: float = 1.0,
                         prior_steps: int = 50, seed: int = 0) -> torch.Tensor:
        """Unit-norm image embeddings (len(captions) · n, D) the prior draws, caption by caption."""
        if self.prior is None:
            raise UserError("drawing from captions through unCLIP needs its prior (prior=<folder from train-prior>)")
        for c in captions:
            if not isinstance(c, str) or not c.strip():
                raise UserError(f"a caption must be a non-empty string, got {c!r}")
            parse_caption(c)
        _check_counts(n=n, prior_steps=prior_steps)
        w = check_guidance(prior_guidance, "prior_guidance")
        text = self.clip.encode_text(list(captions)).float().cpu().repeat_interleave(n, 0)
        generator = torch.Generator().manual_seed(seed)
        try:
            return sample_prior(self.prior, self.prior_diffusion, text, guidance=w, steps=prior_steps,
                                generator=generator)
        except ValueError as e:
            raise UserError(f"prior_steps: {e}") from None

    @torch.no_grad()
    def sample(self, captions: str | Sequence[str], n: int = 1, *, prior_guidance: float = 1.0,
               prior_steps: int = 50, seed: int = 0, **kwargs) -> torch.Tensor:
        """Images (len(captions) · n, 3, 32, 32) in [−1, 1]: each from its own prior sample. `guidance` is
        the decoder's classifier-free scale on the embedding; other keywords as ImagePipeline.sample."""
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise UserError("no captions to draw")
        emb = self.image_embeddings(captions, n, prior_guidance=prior_guidance, prior_steps=prior_steps, seed=seed)
        return self.decode_embeddings(emb, seed=seed, **kwargs)

    @torch.no_grad()
    def variations(self, images, n: int = 1, *, seed: int = 0, **kwargs) -> torch.Tensor:
        """n images (len(images) · n, 3, 32, 32) in [−1, 1] per uint8 image (N, 32, 32, 3), decoded from the
        image's own CLIP embedding: what it shows, drawn again."""
        x = torch.as_tensor(np.array(images))  # a copy: a PNG's array is read-only
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or tuple(x.shape[1:]) != (32, 32, 3) or x.dtype != torch.uint8:
            raise UserError(f"variations need uint8 images of shape (N, 32, 32, 3), got {tuple(x.shape)} {x.dtype}")
        _check_counts(n=n)
        emb = image_embeddings(self.clip, images_to_tensor(x)).repeat_interleave(n, 0)
        return self.decode_embeddings(emb, seed=seed, **kwargs)

    def decode_embeddings(self, emb: torch.Tensor, **kwargs) -> torch.Tensor:
        """Images in [−1, 1], one per unit-norm image embedding (B, D), through the decoder UNet."""
        states, mask = embedding_context(emb.to(self.device))
        states = torch.cat([states, torch.zeros_like(states[:1])])  # the null ∅ last, as `draw` reads it
        mask = torch.cat([mask, mask[:1]])
        return self.draw(states, mask, torch.arange(len(emb)), **kwargs)

    def variations_images(self, images, n: int = 1, **kwargs):
        """uint8 (len(images) · n, 32, 32, 3); keywords as `variations`."""
        return tensor_to_images(self.variations(images, n, **kwargs))
