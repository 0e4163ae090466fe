"""diffusion-lm generate: controlled generation with a frozen Diffusion-LM.

Classifier tasks (pos, tree, spans, semantic, compose) steer every diffusion
step through the core's guidance hook; lengths (and the lengths POS and tree
targets imply) and infilling contexts are held by masked replacement.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from classifiers.io import load_classifier
from classifiers.tasks import NEEDS, TASKS, controls_for, parse_request

from ..core.guidance import ControlGuidance
from ..errors import UserError
from ..eval.targets import read_jsonl
from ..text import from_pretrained, generate
from ..text.constraints import infill_constraint, length_constraint, words_only
from ..text.io import atomic_write
from ..text.trajectory import TrajectoryRecorder
from .common import build, integer, resolve_asset, resolve_checkpoint

ALL_TASKS = TASKS + ("infill",)


def _targets(cfg) -> list:
    if cfg.task == "infill":
        return [f"{cfg.left} ___ {cfg.right}".strip()]
    if (cfg.target is None) == (cfg.targets is None):
        raise UserError("give exactly one of target=<inline target> or targets=<file.jsonl|shipped>")
    if cfg.target is not None:  # hydra reads [3, 5, NP] and {pos: ..} as containers
        t = cfg.target
        return [OmegaConf.to_container(t) if OmegaConf.is_config(t) else t]
    path = cfg.targets
    if path == "shipped":
        path = str(Path(resolve_asset("shipped", "targets")) / f"{cfg.task}.jsonl")
    rows = read_jsonl(path, "targets file")
    for k, r in enumerate(rows, 1):
        if "target" not in r:
            raise UserError(f"{path} row {k}: missing 'target'")
    return [r["target"] for r in rows][: integer(cfg, "limit", 1)]


def load_classifiers(cfg, task: str, model, device) -> dict:
    out = {}
    kinds = NEEDS.get(task, ()) + (("pos",) if task == "length" and cfg.length_shape else ())
    for kind in kinds:
        where = cfg.classifiers[kind]
        clf = load_classifier(resolve_asset(where, "classifier", kind), device=device, kind=kind)
        clf.space.check(model, f"the {kind} classifier ({where})")
        clf.requires_grad_(False)
        out[kind] = clf
    return out


def guidance_config(cfg):
    g = build(cfg, "guidance")
    strength = cfg.strength if cfg.strength is not None else cfg.default_strength.get(cfg.task, 1.0)
    try:
        g.strength = float(strength)
    except (TypeError, ValueError):
        raise UserError(f"strength must be a number, got {strength!r}") from None
    if g.strength < 0 or g.updates < 0 or g.step_size <= 0 or g.skip_last < 0:
        raise UserError("guidance needs strength >= 0, updates >= 0, step_size > 0 and skip_last >= 0")
    return g


@torch.no_grad()
def _word_log_prob(model, tok, hook, texts: list[str]) -> torch.Tensor:
    """Σ_c log p(c | EMB(words), t = 0): how well finished sentences meet their targets, by the classifiers."""
    device = next(model.parameters()).device
    ids = tok.encode_batch(texts, model.config.max_len)[0].to(device)
    with torch.enable_grad():  # some classifiers (the tree CRF) differentiate internally
        return hook.log_prob(model.embed(ids), torch.zeros(len(texts), dtype=torch.long, device=device)).detach()


def main(cfg) -> int:
    if cfg.task not in ALL_TASKS:
        raise UserError(f"unknown task {cfg.task!r}; choose one of {', '.join(ALL_TASKS)}")
    n, batch_size, seed = integer(cfg, "n", 1), integer(cfg, "batch_size", 1), integer(cfg, "seed")
    select = integer(cfg, "select", 1)
    sample_cfg = build(cfg, "sample")
    sample_cfg.length = None  # constraints span the model's full max_len
    gcfg = guidance_config(cfg)
    targets = _targets(cfg)
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    model, tok = from_pretrained(resolve_checkpoint(cfg.checkpoint), device=device)
    classifiers = load_classifiers(cfg, cfg.task, model, device)
    if select > 1 and not classifiers:
        raise UserError(f"select > 1 needs a classifier task (pos, tree, spans, semantic, compose), not {cfg.task}")
    L = model.config.max_len
    g = torch.Generator().manual_seed(seed or 0)
    # every target is checked before anything is sampled: a bad one fails in one line, nothing written
    requests = ([None] * len(targets) if cfg.task == "infill"
                else [parse_request(cfg.task, t, classifiers, L - 2, g) for t in targets])
    recorder = TrajectoryRecorder(model, tok) if cfg.trajectory else None
    jobs = [(i, t) for i, t in enumerate(targets) for _ in range(n)]
    rows = []
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        reqs = [requests[i] for i, _ in chunk]
        known = hook = None
        if cfg.task == "infill":
            known = infill_constraint(model, tok, cfg.left, cfg.right, integer(cfg, "middle", 1), len(chunk))
        elif reqs[0].length is not None:
            known = length_constraint(model, tok, [r.length for r in reqs])
        if classifiers:
            hook = ControlGuidance(controls_for(reqs, classifiers, device), gcfg)
        exclude = None if known is None else words_only(known, tok, len(tok))
        texts, best = None, None
        for k in range(select):  # best of `select` draws by the controls' own log p(c | words) at t = 0
            draw = generate(model, tok, len(chunk), sample_cfg, batch_size=len(chunk), seed=seed + b + 100003 * k,
                            known=known, exclude=exclude, step_hook=hook, callback=recorder)
            if select == 1:
                texts = draw
                break
            score = _word_log_prob(model, tok, hook, draw)
            if texts is None:
                texts, best = draw, score
            else:
                better = score > best
                texts = [d if w else o for d, o, w in zip(draw, texts, better.tolist())]
                best = torch.where(better, score, best)
        for (i, target), text in zip(chunk, texts):
            rows.append({"task": cfg.task, "target": target, "text": text, "system": cfg.system})
            print(text if len(targets) == 1 else f"[{target}] {text}")
    if cfg.output:
        atomic_write(Path(cfg.output), lambda p: Path(p).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"))
    if recorder is not None:
        txt, png = recorder.write(cfg.trajectory, title=f"{cfg.task} target: {targets[0]}")
        print(f"trajectory of the first sample: {txt}, {png}", file=sys.stderr)
    return 0
