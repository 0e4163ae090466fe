"""diffusion-lm build-parser: train the constituency-parser oracle and report its held-out F1."""
from __future__ import annotations

import json

from ..eval.parser import train_parser
from ..config import build
from ..io import check_output_dir


def main(cfg, command: str = "") -> int:
    parser = build(cfg, "parser")
    check_output_dir(parser.out_dir, "parser.out_dir")  # before any work
    summary = train_parser(parser)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0
