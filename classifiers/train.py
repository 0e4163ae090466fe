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

from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion_lm.data.e2e import e2e_split
from diffusion_lm.data.labels import cached_labels
from diffusion_lm.errors import UserError
from diffusion_lm.text import from_pretrained
from diffusion_lm.io import save_json
from diffusion_lm.runtime import pick_device
from diffusion_lm import distributed
from diffusion_lm.training import batch_indices, fit, has_checkpoint, loop_config, noise_stream

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
    schedule: str = "cosine"  # cosine | linear | constant after warm-up (diffusion_lm.training.lr_at)
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    limit: int | None = None  # first N E2E train sentences (labelling trees is the slow part)
    min_count: int = 10  # tree labels and semantic values rarer than this in the train labels are left out
    eval_size: int = 400  # E2E valid sentences for the held-out figures
    max_minutes: float | None = None
    seed: int = 0
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 250
    step_seeded_noise: bool = False  # each step's t and noise from a generator seeded by the step (on under torchrun)
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward


def oracle_rows(kind: str, words: list[list[str]], mrs: list[str], cache: Path, progress: bool) -> list:
    """The `kind` classifier's training labels of each sentence (its `oracle`), cached in `cache`."""
    return cached_labels(KINDS[kind].oracle, words, mrs, cache, progress, desc=f"{kind} oracle labels")


def train_classifier(kind: str, checkpoint: str, out_dir: str, encoder: EncoderConfig, cfg: ClassifierTrainConfig,
                     progress: bool = True, command: str | None = None) -> dict:
    if kind not in KINDS:
        raise UserError(f"unknown classifier task {kind!r}; choose one of {', '.join(KINDS)}")
    loop = loop_config({"optim": cfg})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device, "optim.device")
    lm, tok, diffusion = from_pretrained(checkpoint)
    lm.requires_grad_(False)
    lm = lm.to(device)
    space = LatentSpace.of(lm)
    L = space.max_len

    distributed.check_batch(cfg.batch_size, "optim.batch_size")
    seeded = noise_stream(out, cfg.step_seeded_noise, "optim.step_seeded_noise")
    words, mrs = e2e_split("train", cfg.limit, L - 2)
    v_words, v_mrs = e2e_split("valid", cfg.eval_size, L - 2)
    # under torchrun rank 0 labels (and caches) the sentences; the other ranks read its cache
    rows = distributed.main_first(lambda: oracle_rows(kind, words, mrs, out / "oracle.json.gz", progress))
    v_rows = distributed.main_first(lambda: oracle_rows(kind, v_words, v_mrs, out / "oracle_valid.json.gz", progress))
    if has_checkpoint(out):
        clf = load_classifier(out, kind=kind).train()  # the label sets were fixed on the first run
        clf.space.check(lm, f"the classifier being trained in {out}")
    else:
        clf = KINDS[kind].for_data(space, encoder, rows, cfg.min_count, tokenizer=tok).train()
        if distributed.is_main():
            save_classifier(clf, out)
    clf = clf.to(device)
    labels, v_labels = clf.encode_labels(rows), clf.encode_labels(v_rows)
    ids = tok.encode_batch([" ".join(w) for w in words], L)[0]
    v_ids = tok.encode_batch([" ".join(w) for w in v_words], L)[0]

    T = diffusion.num_timesteps

    def loss_at(step: int) -> torch.Tensor:
        batch = batch_indices(step, cfg.batch_size, len(ids), cfg.seed)
        if not seeded:  # one process, the global RNG (the stream the shipped classifiers were trained with)
            with torch.no_grad():
                t = torch.randint(0, T, (len(batch),)).to(device)
                x_t = diffusion.q_sample(lm.embed(ids[batch].to(device)), t)
            return clf.loss(x_t, t, clf.collate(labels, batch, device))
        # the global batch's t and noise from the step's generator, then this rank's slice; the loss is this
        # rank's share of the global batch's mean, so N processes take the step one process takes
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        t = torch.randint(0, T, (len(batch),), generator=g)
        noise = torch.randn((len(batch), L, space.emb_dim), generator=g)
        local, t, noise = distributed.shard(batch), distributed.shard(t).to(device), distributed.shard(noise).to(device)
        with torch.no_grad():
            x_t = diffusion.q_sample(lm.embed(ids[local].to(device)), t, noise)
        return clf.loss(x_t, t, clf.collate(labels, local, device), total=clf.loss_total(labels, batch))

    result = fit(clf, loss_at, loop, out, name=f"{kind} classifier", progress=progress)
    if not distributed.is_main():  # rank 0 measures and writes
        return {"steps": result.step}
    metrics = {"steps": result.step, "train_minutes": round(result.elapsed_s / 60, 2),
               "train_sentences": len(ids), "final_loss": round(result.last.get("loss", float("nan")), 4),
               "heldout": heldout(clf, lm, diffusion, v_ids, v_labels),
               "parameters": sum(p.numel() for p in clf.parameters())}
    if command:
        metrics["command"] = command
    save_classifier(clf, out, metrics)
    save_json(out / "summary.json", metrics)
    return metrics


@torch.no_grad()
def heldout(clf, lm, diffusion, ids: torch.Tensor, labels, batch_size: int = 100) -> dict:
    """The classifier's held-out score at several noise levels (see each class's `accuracy`)."""
    clf.eval()
    g = torch.Generator().manual_seed(0)
    out = {}
    T = diffusion.num_timesteps
    for t_value in (round(f * T) for f in EVAL_AT):
        scores, weights = [], []
        for k in range(0, len(ids), batch_size):
            rows = torch.arange(k, min(k + batch_size, len(ids)))
            device = next(lm.parameters()).device
            t = torch.full((len(rows),), t_value, device=device)
            x0 = lm.embed(ids[rows].to(device))
            x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g).to(device))
            scores.append(clf.accuracy(x_t, t, clf.collate(labels, rows, device)))
            weights.append(len(rows))
        out[f"t={t_value}"] = round(sum(s * w for s, w in zip(scores, weights)) / sum(weights), 3)
    clf.train()
    return out

