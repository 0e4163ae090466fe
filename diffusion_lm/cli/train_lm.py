"""diffusion-lm train-lm: train the GPT-2-architecture teacher LM on E2E train."""
from __future__ import annotations

import json

from ..lm.teacher import train_lm
from ..config import build


def main(cfg, command: str = "") -> int:
    data, model, train = (build(cfg, k) for k in ("data", "model", "train"))
    summary = train_lm(model, train, data)
    print(json.dumps(summary, indent=2))
    return 0
