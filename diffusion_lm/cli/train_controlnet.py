"""diffusion-lm train-controlnet: train (or resume) a ControlNet on a frozen caption-conditioned UNet."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_controlnet


def main(cfg, command: str = "") -> int:
    controlnet, train = build(cfg, "controlnet"), build(cfg, "train")
    print(f"training a ControlNet (controlnet_preset={cfg.preset_name}) on {train.unet} into {train.out_dir}")
    summary = train_controlnet(controlnet, train, full_config={"command": command, **plain(cfg)})
    print(json.dumps(summary, indent=2))
    return 0
