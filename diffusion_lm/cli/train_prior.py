"""diffusion-lm train-prior: train (or resume) unCLIP's diffusion prior, CLIP text embedding -> image embedding."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_prior


def main(cfg, command: str = "") -> int:
    prior, train = build(cfg, "prior"), build(cfg, "train")
    print(f"training the unCLIP prior (prior_preset={cfg.preset_name}) into {train.out_dir}")
    metrics = train_prior(prior, train, full_config={"command": command, **plain(cfg)})
    print(json.dumps(metrics, indent=2))
    return 0
