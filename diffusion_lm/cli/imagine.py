"""diffusion-lm imagine: a PNG grid of images for a caption (or several), from ImagePipeline."""
from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from ..config import integer
from ..errors import UserError
from ..image.evaluate import save_grid
from ..image.unet import tensor_to_images
from ..pipelines.image import ImagePipeline, ImageTrajectory, check_guidance, check_rerank_clip


def captions_of(cfg) -> list[str]:
    value = cfg.captions if cfg.captions is not None else cfg.caption
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise UserError(f"caption must be a string and captions a list of strings, got {value!r}")
    return captions


def read_png(path, what: str, mode: str) -> np.ndarray:
    """A 32 x 32 PNG as uint8 (32, 32, 3) (mode RGB) or (32, 32) (mode L), or a one-line UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size, arr = im.size, np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{what} {path} is not a readable image ({type(e).__name__})") from None
    if size != (32, 32):
        raise UserError(f"{what} {path} is {size[0]} x {size[1]}; the scenes are 32 x 32")
    return arr


def read_edit(init, mask):
    """(image, keep mask) of an inpainting edit from init= and mask=, or None when neither is given."""
    if init is None and mask is None:
        return None
    if init is None or mask is None:
        raise UserError("inpainting needs both init=<png> (the image) and mask=<png> (white where it is redrawn)")
    return read_png(init, "init image", "RGB"), read_png(mask, "mask", "L") <= 127


def main(cfg, command: str = "") -> int:
    captions = captions_of(cfg)
    n, seed, steps, batch_size = (integer(cfg, k, m) for k, m in (("n", 1), ("seed", None), ("steps", 1),
                                                                   ("batch_size", 1)))
    guidance = check_guidance(cfg.w, "w")  # before any model loads
    select = integer(cfg, "select", 1) or 1  # null: no reranking
    if select > 1 and (cfg.init is not None or cfg.mask is not None or cfg.control is not None
                       or cfg.prior is not None or cfg.variation is not None or cfg.trajectory):
        raise UserError("select (CLIP reranking) works on plain caption sampling, not with inpainting, a control "
                        "map, unCLIP or a trajectory (which follows one candidate, not the one kept)")
    rerankers = check_rerank_clip(cfg, select)
    edit = read_edit(cfg.init, cfg.mask)
    if (cfg.control is None) != (cfg.controlnet is None):
        raise UserError("a control map needs both controlnet=<folder> and control=<png> (white where the objects are)")
    hint = None if cfg.control is None else (read_png(cfg.control, "control map", "L") > 127)[None].astype(np.float32)
    strength = cfg.control_strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not np.isfinite(strength) or strength < 0:
        raise UserError(f"control_strength must be a finite number >= 0, got {strength!r}")
    if not isinstance(cfg.paste, bool):
        raise UserError(f"paste must be true or false, got {cfg.paste!r}")
    if cfg.prior is not None or cfg.variation is not None:
        return unclip(cfg, captions, n, guidance, dict(steps=steps, sampler=cfg.sampler, eta=cfg.eta,
                                                       threshold=cfg.threshold, seed=seed, batch_size=batch_size),
                      edit is not None or hint is not None)
    pipe = ImagePipeline.from_pretrained(cfg.unet, cfg.autoencoder, cfg.clip, device=cfg.device,
                                         controlnet_dir=cfg.controlnet)
    pipe.set_reranker(rerankers)
    recorder = ImageTrajectory(pipe, every=integer(cfg, "trajectory_every", 1)) if cfg.trajectory else None
    kw = dict(guidance=guidance, steps=steps, sampler=cfg.sampler, eta=cfg.eta, threshold=cfg.threshold, seed=seed,
              batch_size=batch_size, callback=recorder, control=hint, control_scale=float(strength))
    if edit is not None:
        init, keep = edit
        images = tensor_to_images(pipe.inpaint(np.repeat(init[None], n * len(captions), 0), keep,
                                               [c for c in captions for _ in range(n)], paste=bool(cfg.paste),
                                               resample=integer(cfg, "resample", 1), **kw))
    else:
        images = pipe(captions, n, select=select, **kw)
    print(save_grid(images, cfg.out, ncol=n if len(captions) > 1 else min(n, 8)))
    if recorder is not None:
        print(recorder.write(cfg.trajectory))
    return 0


def unclip(cfg, captions: list[str], n: int, guidance: float, kw: dict, other_control: bool) -> int:
    """imagine through unCLIP: captions via the prior, or variations of one image, decoded by its decoder."""
    from ..pipelines.unclip import UnCLIPPipeline

    if other_control:
        raise UserError("unCLIP (prior= or variation=) does not combine with inpainting or a ControlNet here")
    if cfg.trajectory:
        raise UserError("trajectory= is for the caption UNet; unCLIP draws do not record one")
    prior_w = check_guidance(cfg.prior_w, "prior_w")
    image = None if cfg.variation is None else read_png(cfg.variation, "variation image", "RGB")
    pipe = UnCLIPPipeline.from_pretrained(cfg.prior, cfg.unet, cfg.autoencoder, cfg.clip, device=cfg.device)
    if image is not None:
        images = tensor_to_images(pipe.variations(image[None], n, guidance=guidance, **kw))
        images = np.concatenate([image[None], images])  # the source first
        print(save_grid(images, cfg.out, ncol=min(n + 1, 9)))
        return 0
    images = tensor_to_images(pipe.sample(captions, n, guidance=guidance, prior_guidance=prior_w, **kw))
    print(save_grid(images, cfg.out, ncol=n if len(captions) > 1 else min(n, 8)))
    return 0
