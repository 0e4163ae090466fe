"""diffusion-lm train-autoencoder: train (or resume) the image KL autoencoder (LDM's first stage)."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_autoencoder


def main(cfg, command: str = "") -> int:
    model, train = build(cfg, "autoencoder"), build(cfg, "train")
    print(f"training the autoencoder (autoencoder_preset={cfg.preset_name}) into {train.out_dir}")
    metrics = train_autoencoder(model, train, full_config={"command": command, **plain(cfg)}, command=command)
    print(json.dumps(metrics, indent=2))
    return 0
