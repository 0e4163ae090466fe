"""diffusion-lm train-unet: train (or resume) the caption-conditioned UNet on latents or pixels."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_unet


def main(cfg, command: str = "") -> int:
    unet, diffusion, train = (build(cfg, k) for k in ("unet", "diffusion", "train"))
    print(f"training the {unet.space} UNet (unet_preset={cfg.preset_name}) into {train.out_dir}")
    summary = train_unet(unet, diffusion, train, full_config={"command": command, **plain(cfg)})
    print(json.dumps(summary, indent=2))
    return 0
