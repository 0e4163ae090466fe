"""diffusion-lm train: train (or resume) a Diffusion-LM on E2E."""
from __future__ import annotations

import json

from ..text.train import train
from ..config import build, plain


def main(cfg, command: str = "") -> int:
    data, model, optim, run = (build(cfg, k) for k in ("data", "model", "optim", "run"))
    print(f"training preset={cfg.preset_name} into {run.out_dir}")
    summary = train(data, model, optim, run, full_config=plain(cfg), diffusion=build(cfg, "diffusion"))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    for s in summary.get("samples", []):
        print(s)
    return 0
