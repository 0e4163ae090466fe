"""diffusion-lm baseline: FUDGE or PPLM on the base AR LM, with generate's targets and JSONL rows."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from classifiers.tasks import TASKS

from ..errors import UserError
from ..text.io import atomic_write
from .common import build, integer, resolve_asset
from .generate import _targets
from .train_baseline import METHODS

SHIPPED = {"fudge": "fudge-discriminator", "pplm": "pplm-discriminator"}


def main(cfg) -> int:
    from ..baselines.fudge import fudge_generate, load_discriminator
    from ..baselines.pplm import PPLM
    from ..lm import ARLM

    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    n, batch_size, seed = integer(cfg, "n", 1), integer(cfg, "batch_size", 1), integer(cfg, "seed")
    method_cfg = build(cfg, cfg.method)
    targets = _targets(cfg)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    lm = ARLM.load(resolve_asset(cfg.lm, "model", "base-lm"), device=device)
    lm.model.requires_grad_(False)
    disc = None
    if cfg.method == "fudge" or method_cfg.attribute == "discrim":
        disc = load_discriminator(resolve_asset(cfg.attribute_model, "model", SHIPPED[cfg.method]), cfg.method, device)
        fits = (disc.gpt2["vocab_size"] == len(lm.tokenizer) if cfg.method == "fudge"
                else disc.hidden == lm.model.config.n_embd)
        if not fits:
            raise UserError(f"the {cfg.method} attribute model ({cfg.attribute_model}) was trained for another base LM")
    if cfg.method == "fudge":
        if method_cfg.top_k < 1 or method_cfg.strength < 0:
            raise UserError("FUDGE needs top_k >= 1 and strength >= 0")
        parsed = [disc.target(cfg.task, t) for t in targets]  # every target checked before any decoding
    else:
        pplm = PPLM(lm.model, lm.tokenizer, method_cfg, disc)
        parsed = [pplm.target(cfg.task, t) for t in targets]
    g = torch.Generator().manual_seed(seed)
    system = cfg.system or cfg.method
    jobs = [(i, t) for i, t in enumerate(targets) for _ in range(n)]
    rows = []
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        goals = [parsed[i] for i, _ in chunk]
        if cfg.method == "fudge":
            out = fudge_generate(lm.model, lm.tokenizer, disc, goals, method_cfg, g)
        else:
            out = pplm.generate(goals, g)
        for (i, target), text in zip(chunk, out):
            rows.append({"task": cfg.task, "target": target, "text": text, "system": system})
            print(text if len(targets) == 1 else f"[{target}] {text}")
    if cfg.output:
        atomic_write(Path(cfg.output), lambda p: Path(p).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    return 0
