"""diffusion-lm train-baseline: train FUDGE's future discriminator or PPLM's value discriminator."""
from __future__ import annotations

import json

from ..errors import UserError
from ..assets import resolve_asset
from ..config import build
from ..io import check_output_dir

METHODS = ("fudge", "pplm")


def main(cfg, command: str = "") -> int:
    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    check_output_dir(cfg.out_dir, "out_dir")  # before any work
    lm = resolve_asset(cfg.lm, "model", "base-lm")
    if cfg.method == "fudge":
        from ..baselines.fudge import train_fudge

        summary = train_fudge(lm, cfg.out_dir, build(cfg, "fudge"), command=command, lm_label=cfg.lm)
    else:
        from ..baselines.pplm import train_pplm

        summary = train_pplm(lm, cfg.out_dir, build(cfg, "pplm"), command=command, lm_label=cfg.lm)
    print(json.dumps(summary, indent=2))
    return 0
