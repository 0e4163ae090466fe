"""diffusion-lm build-parser: train the constituency-parser oracle and report its held-out F1."""
from __future__ import annotations

import json

from ..eval.parser import train_parser
from ..config import build


def main(cfg, command: str = "") -> int:
    summary = train_parser(build(cfg, "parser"))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0
