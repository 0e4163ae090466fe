"""diffusion-lm train-image-classifier: train (or resume) a noisy CLIP or attribute classifier on x_t."""
from __future__ import annotations

import json

from ..config import build, plain
from ..image.train import train_noisy


def main(cfg, command: str = "") -> int:
    classifier, train = build(cfg, "classifier"), build(cfg, "train")
    print(f"training a noisy {classifier.kind} model ({classifier.space}, image_classifier_preset={cfg.preset_name}) "
          f"into {train.out_dir}")
    metrics = train_noisy(classifier, train, full_config={"command": command, **plain(cfg)})
    print(json.dumps(metrics, indent=2))
    return 0
