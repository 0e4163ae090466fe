"""diffusion-lm train-classifier: a control classifier for a frozen Diffusion-LM."""
from __future__ import annotations

import json

from classifiers.io import KINDS
from classifiers.train import train_classifier

from ..errors import UserError
from ..assets import resolve_checkpoint
from ..config import build
from ..io import check_output_dir


def main(cfg, command: str = "") -> int:
    if cfg.task not in KINDS:
        raise UserError(f"unknown classifier task {cfg.task!r}; choose one of {', '.join(KINDS)} "
                        "(spans control uses the tree classifier)")
    check_output_dir(cfg.out_dir, "out_dir")  # before any work
    metrics = train_classifier(cfg.task, resolve_checkpoint(cfg.checkpoint), cfg.out_dir, build(cfg, "encoder"),
                               build(cfg, "optim"), command=command)
    print(json.dumps(metrics, indent=2))
    return 0
