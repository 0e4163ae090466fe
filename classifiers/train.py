"""Training a control classifier on latents noised by the core's forward process.

For each batch: E2E train sentences → the frozen Diffusion-LM's EMB → x_0 →
x_t = q_sample(x_0, t) with t uniform over the training steps → the
classifier's loss against the oracle's labels (tagger tags, parser trees,
stated values). The Diffusion-LM is never updated.

Folder layout (`out_dir`): config.json + model.safetensors (the classifier),
oracle.json.gz (the oracle's labels, reused on resume), checkpoint/,
train_log.jsonl, summary.json. A killed run resumes with the same command.
"""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffusion_lm.errors import UserError
from diffusion_lm.text import from_pretrained
from diffusion_lm.text.data import load_e2e
from diffusion_lm.text.io import atomic_write, save_json
from diffusion_lm.text.train import batch_indices, load_checkpoint, lr_at, save_checkpoint

from .encoder import EncoderConfig, LatentSpace
from .io import KINDS, load_classifier, save_classifier

EVAL_AT = (0.0, 0.25, 0.5, 0.75, 0.95)  # held-out scores at these fractions of T (t = 0, 500, ... for T = 2000)


@dataclass
class ClassifierTrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    schedule: str = "cosine"  # after warm-up, as the Diffusion-LM trainer (text.train.lr_at)
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    limit: int | None = None  # first N E2E train sentences (labelling trees is the slow part)
    min_count: int = 10  # tree labels and semantic values rarer than this in the train labels are left out
    eval_size: int = 400  # E2E valid sentences for the held-out figures
    max_minutes: float | None = None
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 250


def oracle_rows(kind: str, words: list[list[str]], mrs: list[str], cache: Path, progress: bool) -> list:
    if cache.is_file():
        with gzip.open(cache, "rt", encoding="utf-8") as f:
            rows = json.load(f)
        if len(rows) == len(words):
            return rows
    oracle = KINDS[kind].oracle
    rows: list = []
    chunk = 256
    for k in tqdm(range(0, len(words), chunk), desc=f"{kind} oracle labels", disable=not progress):
        rows += oracle(words[k:k + chunk], mrs[k:k + chunk])

    def write(p):
        with gzip.open(p, "wt", encoding="utf-8") as f:
            json.dump(rows, f)
    atomic_write(cache, write)
    return rows


def e2e_split(split: str, limit: int | None, max_words: int) -> tuple[list[list[str]], list[str]]:
    ds = load_e2e(split)
    rows = [(t.split(), m) for t, m in zip(ds["text"], ds["mr"]) if 1 <= len(t.split()) <= max_words]
    rows = rows[:limit] if limit else rows
    return [w for w, _ in rows], [m for _, m in rows]


def train_classifier(kind: str, checkpoint: str, out_dir: str, encoder: EncoderConfig, cfg: ClassifierTrainConfig,
                     progress: bool = True, command: str | None = None) -> dict:
    if kind not in KINDS:
        raise UserError(f"unknown classifier task {kind!r}; choose one of {', '.join(KINDS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lm, tok = from_pretrained(checkpoint)
    lm.requires_grad_(False)
    space = LatentSpace.of(lm)
    L = space.max_len

    words, mrs = e2e_split("train", cfg.limit, L - 2)
    v_words, v_mrs = e2e_split("valid", cfg.eval_size, L - 2)
    rows = oracle_rows(kind, words, mrs, out / "oracle.json.gz", progress)
    v_rows = oracle_rows(kind, v_words, v_mrs, out / "oracle_valid.json.gz", progress)
    resuming = (out / "checkpoint").exists() or (out / "checkpoint.old").exists()
    if resuming:
        clf = load_classifier(out, kind=kind).train()  # the label sets were fixed on the first run
        clf.space.check(lm, f"the classifier being trained in {out}")
    else:
        clf = KINDS[kind].for_data(space, encoder, rows, cfg.min_count, tokenizer=tok).train()
        save_classifier(clf, out)
    labels, v_labels = clf.encode_labels(rows), clf.encode_labels(v_rows)
    ids = tok.encode_batch([" ".join(w) for w in words], L)[0]
    v_ids = tok.encode_batch([" ".join(w) for w in v_words], L)[0]

    optimizer = torch.optim.AdamW(clf.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed = (load_checkpoint(out, clf, optimizer, {}) if resuming else (0, 0.0))
    started = time.time() - elapsed
    log_path = out / "train_log.jsonl"
    T = lm.diffusion.num_timesteps
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {kind} classifier", disable=not progress,
               dynamic_ncols=True)
    loss_value = float("nan")
    while step < cfg.steps:
        if cfg.max_minutes is not None and (time.time() - started) / 60 > cfg.max_minutes:
            break
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = batch_indices(step, cfg.batch_size, len(ids), cfg.seed)
        with torch.no_grad():
            t = torch.randint(0, T, (len(batch),))
            x_t = lm.diffusion.q_sample(lm.embed(ids[batch]), t)
        loss = clf.loss(x_t, t, clf.collate(labels, batch))
        if not torch.isfinite(loss):
            raise UserError(f"classifier loss became {loss.item()} at step {step}; try a lower optim.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(clf.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        loss_value = loss.item()
        if step % cfg.log_every == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "elapsed_s": round(time.time() - started, 1), "lr": lr,
                                    "loss": round(loss_value, 5)}) + "\n")
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(out, step, time.time() - started, clf, optimizer, {})
    bar.close()
    save_checkpoint(out, step, time.time() - started, clf, optimizer, {})
    metrics = {"steps": step, "train_minutes": round((time.time() - started) / 60, 2),
               "train_sentences": len(ids), "final_loss": round(loss_value, 4),
               "heldout": heldout(clf, lm, v_ids, v_labels), "parameters": sum(p.numel() for p in clf.parameters())}
    if command:
        metrics["command"] = command
    save_classifier(clf, out, metrics)
    save_json(out / "summary.json", metrics)
    return metrics


@torch.no_grad()
def heldout(clf, lm, ids: torch.Tensor, labels, batch_size: int = 100) -> dict:
    """The classifier's held-out score at several noise levels (see each class's `accuracy`)."""
    clf.eval()
    g = torch.Generator().manual_seed(0)
    out = {}
    T = lm.diffusion.num_timesteps
    for t_value in (round(f * T) for f in EVAL_AT):
        scores, weights = [], []
        for k in range(0, len(ids), batch_size):
            rows = torch.arange(k, min(k + batch_size, len(ids)))
            t = torch.full((len(rows),), t_value)
            x0 = lm.embed(ids[rows])
            x_t = lm.diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g))
            scores.append(clf.accuracy(x_t, t, clf.collate(labels, rows)))
            weights.append(len(rows))
        out[f"t={t_value}"] = round(sum(s * w for s, w in zip(scores, weights)) / sum(weights), 3)
    clf.train()
    return out

