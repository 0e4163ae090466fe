"""diffusion-lm build-targets: control targets for the five tasks from E2E valid."""
from __future__ import annotations

import json

from ..eval.parser import check_parser
from ..eval.targets import build_targets
from ..assets import resolve_asset
from ..config import build, integer
from ..io import check_output_dir


def main(cfg, command: str = "") -> int:
    check_output_dir(cfg.out_dir, "out_dir")  # before any work
    check_parser(resolve_asset(cfg.parser, "parser"))
    counts = build_targets(cfg.out_dir, n=integer(cfg, "n", 1), seed=integer(cfg, "seed"), parser=resolve_asset(cfg.parser, "parser"),
                           data=build(cfg, "data"))
    print(json.dumps({"out_dir": cfg.out_dir, "targets": counts}))
    return 0
