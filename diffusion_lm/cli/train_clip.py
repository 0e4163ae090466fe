"""diffusion-lm train-clip: train (or resume) the image CLIP pair (caption transformer + conv image tower)."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_clip


def main(cfg, command: str = "") -> int:
    model, train = build(cfg, "clip"), build(cfg, "train")
    print(f"training the CLIP pair (clip_preset={cfg.preset_name}) into {train.out_dir}")
    metrics = train_clip(model, train, full_config={"command": command, **plain(cfg)}, command=command)
    print(json.dumps(metrics, indent=2))
    return 0
