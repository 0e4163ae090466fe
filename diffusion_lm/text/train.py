"""Training a Diffusion-LM: a plain loop (nanoGPT-style) with EMA, resumable checkpoints.

Folder layout of a run (`out_dir`):
    config.json, model.safetensors, tokenizer.json   the EMA model, loadable by from_pretrained
    checkpoint/                                      raw weights, optimizer, EMA, RNG, step
    train_config.json, train_log.jsonl, loss_curve.png, samples.txt
A killed run restarts from `checkpoint/` with the same command.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .data import DataConfig, load_e2e
from .generation import SampleConfig, generate
from .io import (config_from_dict, load_json, load_tensors, load_weights, save_json, save_pretrained,
                 save_tensors)
from ..core.timesteps import TimestepSampler
from ..runtime import adamw, keep_freed_memory
from .loss import diffusion_lm_loss
from .model import DiffusionLM, DiffusionLMConfig
from .tokenizer import WordTokenizer


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    anchor_weight: float = 0.0  # see loss.py
    t_sampling: str = "uniform"  # uniform | warped (draw t where the loss rises fastest; core/timesteps.py)
    seed: int = 0
    threads: int = 0  # torch threads; 0 keeps torch's default
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    max_minutes: float | None = None  # stop early (and checkpoint) after this wall time
    # With max_minutes, the schedule advances by whichever budget is further spent, steps or minutes,
    # so a machine too slow to reach `steps` in time still anneals the lr before the cap stops it.
    # Off by default: on runs cut to a fifth and to 72% of their schedule, annealing to the clock
    # made the samples less fluent, not more (README, "A slow day").
    anneal_by_time: bool = False


@dataclass
class RunConfig:
    out_dir: str = "runs/cpu"
    log_every: int = 25
    checkpoint_every: int = 200
    final_samples: int = 20
    snapshot_every: int | None = None  # keep the EMA model every N steps in snapshots/ (fluency-vs-time studies)
    sample: SampleConfig = field(default_factory=SampleConfig)


def lr_at(step: int, o: OptimConfig, minutes: float | None = None) -> float:
    """The learning rate at `step`, `minutes` of training in (used with max_minutes and anneal_by_time)."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    if minutes is not None and o.anneal_by_time and o.max_minutes:  # only the Diffusion-LM trainer passes minutes
        progress = max(progress, min(1.0, minutes / o.max_minutes))
    if o.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif o.schedule == "linear":
        factor = 1 - progress
    else:
        raise UserError(f"unknown optim.schedule {o.schedule!r}; choose cosine, linear or constant")
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * factor)


def build_dataset(data: DataConfig, tokenizer: WordTokenizer | None = None):
    """Training ids (N, max_len) and the tokenizer (built from train when not given)."""
    train = load_e2e("train", data)
    texts = train["text"]
    if tokenizer is None:
        tokenizer = WordTokenizer.train(texts, min_freq=data.min_freq)
    ids, fits = tokenizer.encode_batch(texts, data.max_len)
    if not fits.any():
        raise UserError(f"no training sentence fits data.max_len={data.max_len}")
    return ids[fits], tokenizer


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows for `step`: epochs are seeded permutations, so resuming needs only the step."""
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        rows += perm[offset: offset + batch_size - len(rows)].tolist()
    return torch.tensor(rows)


# ---- checkpoint state (safetensors + JSON, no pickle) ------------------------------------
def _state_tensors(model, optimizer, ema, tsampler=None) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if tsampler is not None:
        tensors.update({f"tsampler.{k}": v for k, v in tsampler.state().items()})
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors, {"param_groups": opt["param_groups"]}


def save_checkpoint(out: Path, step: int, elapsed: float, model, optimizer, ema, tsampler=None) -> None:
    """Write checkpoint.tmp/ completely, then swap it in; a kill leaves the old or the new one."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, meta = _state_tensors(model, optimizer, ema, tsampler)
    save_tensors(tmp / "state.safetensors", tensors)
    save_json(tmp / "state.json", {"step": step, "elapsed_s": elapsed, **meta})
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out: Path, model, optimizer, ema, tsampler=None) -> tuple[int, float]:
    ck = out / "checkpoint"
    if not ck.exists() and (out / "checkpoint.old").exists():
        ck = out / "checkpoint.old"  # killed between the two renames
    meta = load_json(ck / "state.json")
    tensors = load_tensors(ck / "state.safetensors")
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(ck))
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    if tsampler is not None and "tsampler.loss" in tensors:
        tsampler.load_state({"loss": tensors["tsampler.loss"], "seen": tensors["tsampler.seen"]})
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), float(meta["elapsed_s"])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("optim.device=cuda but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown optim.device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def _check_same_run(out: Path, model_cfg: dict) -> None:
    saved = load_json(out / "config.json")
    diff = [k for k in model_cfg if saved.get(k) != model_cfg[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{out} holds a run with a different model ({k}: {saved.get(k)} there, "
                        f"{model_cfg[k]} now); choose another out_dir or delete it")


def train(data: DataConfig, model_cfg: DiffusionLMConfig, optim: OptimConfig, run: RunConfig,
          full_config: dict | None = None, progress: bool = True) -> dict:
    """Train (or resume) a Diffusion-LM; returns a summary with the final loss terms."""
    out = Path(run.out_dir)
    resuming = (out / "checkpoint").exists() or (out / "checkpoint.old").exists()
    if optim.threads:
        torch.set_num_threads(optim.threads)
    keep_freed_memory()
    torch.manual_seed(optim.seed)
    tokenizer = WordTokenizer.load(out) if resuming else None
    ids, tokenizer = build_dataset(data, tokenizer)
    model_cfg.vocab_size = len(tokenizer)
    model_cfg.max_len = data.max_len
    device = _device(optim.device)
    model = DiffusionLM(model_cfg).to(device)
    if resuming:
        _check_same_run(out, model.config_dict())
    optimizer = adamw(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        tsampler = TimestepSampler(model.diffusion.num_timesteps, optim.t_sampling)
    except ValueError as e:
        raise UserError(f"optim.t_sampling: {e}") from None
    step, elapsed = 0, 0.0
    if resuming:
        step, elapsed = load_checkpoint(out, model, optimizer, ema, tsampler)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_pretrained(model, tokenizer, out)  # config + tokenizer first, so resume can check them
        if full_config is not None:
            save_json(out / "train_config.json", full_config)

    # EMA pairs, built once: state_dict tensors share storage with the parameters the optimizer updates in place.
    now = model.state_dict()
    ema_float = [ema[k] for k, v in now.items() if v.dtype.is_floating_point]
    now_float = [v for v in now.values() if v.dtype.is_floating_point]
    ema_other = [(ema[k], v) for k, v in now.items() if not v.dtype.is_floating_point]
    log_path = out / "train_log.jsonl"
    model.train()
    started = time.time() - elapsed
    bar = tqdm(total=optim.steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    last: dict[str, float] = {}
    while step < optim.steps:
        if optim.max_minutes is not None and (time.time() - started) / 60 > optim.max_minutes:
            break
        lr = lr_at(step, optim, (time.time() - started) / 60)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = ids[batch_indices(step, optim.batch_size, len(ids), optim.seed)].to(device)
        terms = diffusion_lm_loss(model, batch, anchor_weight=optim.anchor_weight, per_example=True,
                                  t=tsampler.sample(len(batch), device))
        tsampler.update(terms.pop("t"), terms.pop("signal"))
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise UserError(f"loss became {loss.item()} at step {step}; the last good checkpoint is kept in {out} "
                            f"(try a lower optim.lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        with torch.no_grad():
            decay = min(optim.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_float, now_float, 1 - decay)
            for e, v in ema_other:
                e.copy_(v)
        step += 1
        bar.update(1)
        last = {k: round(v.item(), 5) for k, v in terms.items()}
        if step % run.log_every == 0 or step == optim.steps:
            bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{lr:.1e}")
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "elapsed_s": round(time.time() - started, 1), "lr": lr, **last}) + "\n")
        if step % run.checkpoint_every == 0 or step == optim.steps:
            save_checkpoint(out, step, time.time() - started, model, optimizer, ema, tsampler)
            save_pretrained(model, tokenizer, out, state_dict=ema)
        if run.snapshot_every and step % run.snapshot_every == 0:
            snap = out / "snapshots" / f"step{step:07d}"
            save_pretrained(model, tokenizer, snap, state_dict=ema)
            save_json(snap / "progress.json", {"step": step, "elapsed_s": round(time.time() - started, 1)})
    bar.close()
    if step % run.checkpoint_every and step != optim.steps:  # stopped by max_minutes
        save_checkpoint(out, step, time.time() - started, model, optimizer, ema, tsampler)
        save_pretrained(model, tokenizer, out, state_dict=ema)
    elapsed = time.time() - started
    summary = {"steps": step, "train_minutes": round(elapsed / 60, 2), "final_terms": last,
               "parameters": model.num_parameters(), "train_sentences": len(ids), "vocab_size": len(tokenizer),
               # the running denoising loss of each slice of timesteps (what t_sampling=warped draws by)
               "loss_by_t": [[int(lo), int(hi), round(float(v), 4)] for lo, hi, v, seen in
                             zip(tsampler.edges[:-1], tsampler.edges[1:], tsampler.loss, tsampler.seen) if seen]}
    _plot_losses(log_path, out / "loss_curve.png")
    if run.final_samples:
        model.load_state_dict(ema)
        sents = generate(model, tokenizer, run.final_samples, run.sample, progress=progress)
        (out / "samples.txt").write_text("\n".join(sents) + "\n")
        summary["samples"] = sents
    save_json(out / "summary.json", summary)
    return summary


def _plot_losses(log_path: Path, png: Path) -> None:
    if not log_path.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    keys = [k for k in ("loss", "mse", "rounding", "anchor", "prior") if k in rows[0]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (batch mean)")
    ax.legend()
    ax.set_title("Diffusion-LM training")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
