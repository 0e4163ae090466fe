"""diffusion-lm imagine: a PNG grid of images for a caption (or several), from ImagePipeline."""
from __future__ import annotations

from omegaconf import OmegaConf

from ..config import integer
from ..errors import UserError
from ..image.evaluate import save_grid
from ..pipelines.image import ImagePipeline, ImageTrajectory, check_guidance


def captions_of(cfg) -> list[str]:
    value = cfg.captions if cfg.captions is not None else cfg.caption
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    captions = [value] if isinstance(value, str) else value
    if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
        raise UserError(f"caption must be a string and captions a list of strings, got {value!r}")
    return captions


def main(cfg, command: str = "") -> int:
    captions = captions_of(cfg)
    n, seed, steps, batch_size = (integer(cfg, k, m) for k, m in (("n", 1), ("seed", None), ("steps", 1),
                                                                   ("batch_size", 1)))
    guidance = check_guidance(cfg.w, "w")  # before any model loads
    pipe = ImagePipeline.from_pretrained(cfg.unet, cfg.autoencoder, cfg.clip, device=cfg.device)
    recorder = ImageTrajectory(pipe, every=integer(cfg, "trajectory_every", 1)) if cfg.trajectory else None
    images = pipe(captions, n, guidance=guidance, steps=steps, sampler=cfg.sampler, eta=cfg.eta,
                  threshold=cfg.threshold, seed=seed, batch_size=batch_size, callback=recorder)
    print(save_grid(images, cfg.out, ncol=n if len(captions) > 1 else min(n, 8)))
    if recorder is not None:
        print(recorder.write(cfg.trajectory))
    return 0
