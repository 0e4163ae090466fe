"""diffusion-lm generate: controlled generation (length, infilling) with a frozen Diffusion-LM."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..eval.metrics import parse_length_target
from ..eval.targets import read_jsonl
from ..text import from_pretrained, generate
from ..text.constraints import infill_constraint, length_constraint, words_only
from ..text.io import atomic_write
from .common import build, integer, resolve_asset, resolve_checkpoint

TASKS = ("length", "infill")


def _targets(cfg) -> list:
    if cfg.task == "infill":
        return [f"{cfg.left} ___ {cfg.right}".strip()]
    if (cfg.target is None) == (cfg.targets is None):
        raise UserError("give exactly one of target=<inline target> or targets=<file.jsonl|shipped>")
    if cfg.target is not None:
        return [cfg.target]
    path = cfg.targets
    if path == "shipped":
        path = str(Path(resolve_asset("shipped", "targets")) / f"{cfg.task}.jsonl")
    rows = read_jsonl(path, "targets file")
    for k, r in enumerate(rows, 1):
        if "target" not in r:
            raise UserError(f"{path} row {k}: missing 'target'")
    return [r["target"] for r in rows][: integer(cfg, "limit", 1)]


def main(cfg) -> int:
    if cfg.task not in TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    n, batch_size, seed = integer(cfg, "n", 1), integer(cfg, "batch_size", 1), integer(cfg, "seed")
    sample_cfg = build(cfg, "sample")
    sample_cfg.length = None  # constraints span the model's full max_len
    targets = _targets(cfg)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    model, tok = from_pretrained(resolve_checkpoint(cfg.checkpoint), device=device)
    L = model.config.max_len
    if cfg.task == "length":
        lengths = [parse_length_target(t, L - 2) for t in targets]
    jobs = [(i, t) for i, t in enumerate(targets) for _ in range(n)]
    rows = []
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        if cfg.task == "length":
            known = length_constraint(model, tok, [lengths[i] for i, _ in chunk])
        else:
            known = infill_constraint(model, tok, cfg.left, cfg.right, integer(cfg, "middle", 1), len(chunk))
        texts = generate(model, tok, len(chunk), sample_cfg, batch_size=len(chunk), seed=seed + b,
                         known=known, exclude=words_only(known, tok, len(tok)))
        for (i, target), text in zip(chunk, texts):
            rows.append({"task": cfg.task, "target": target, "text": text, "system": cfg.system})
            print(text if len(targets) == 1 else f"[{target}] {text}")
    if cfg.output:
        atomic_write(Path(cfg.output), lambda p: Path(p).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    return 0
