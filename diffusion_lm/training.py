"""The one training loop. A trainer supplies its model, its batches and its loss; the loop owns the rest.

    loop = loop_config({"optim": cfg})            # the trainer's own config section(s), checked here
    result = fit(model, lambda step: model.loss(batch_at(step)), loop, out_dir)

The loop (nanoGPT-style, no framework around it) owns: AdamW (`runtime.adamw`); the learning rate,
warm-up then cosine, linear or constant down to `min_lr_ratio` (`lr_at`); an optional EMA of the
weights; gradient clipping; a wall-clock cap (`max_minutes`); a tqdm bar; `train_log.jsonl` and
`loss_curve.png`; a one-line UserError when the loss is NaN or infinite; and checkpoints every
`checkpoint_every` steps from which a killed run resumes exactly.

Checkpoint folder `out/checkpoint/` (safetensors + JSON, no pickle):
    state.safetensors  model.*, ema.*, opt.<param index>.<key>, rng.torch (+ rng.cuda), <extra>.<key>
    state.json         step, elapsed_s, the optimizer's param_groups, extra state that is not a tensor
It is written whole into checkpoint.tmp/ and then swapped in, so a kill leaves the old or the new one.

Exact resume restores weights, optimizer, EMA, torch's RNG, the step and the elapsed time, and the
state of whatever the trainer registers in `extra` (objects with `state() -> dict` and
`load_state(dict)`, such as the Diffusion-LM's TimestepSampler, or an `Extra` of two functions).
A trainer's batches must therefore be a function of the step (`batch_indices`, a draw seeded by
the step) or come from registered state (a torch.Generator, through `generator_state`).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import distributed
from .errors import UserError
from .io import (load_json, load_tensors, load_weights, read_jsonl, remove_stale_temps, save_json, save_tensors,
                 write_jsonl)
from .runtime import PRECISIONS, adamw, allow_tf32, autocast, keep_freed_memory, resolve_precision

SCHEDULES = ("cosine", "linear", "constant")
MAX_SEED = 2 ** 40  # seeds become `seed * 100003 + epoch` in batch_indices, which must fit in 64 bits
MAX_BATCH = 65536  # examples per step; far above any preset, far below what exhausts memory
_RESERVED = ("model", "ema", "opt", "rng")  # checkpoint key prefixes of the loop's own state


@dataclass
class LoopConfig:
    """The keys every trainer shares. Trainers keep their own config dataclasses (and field names);
    `loop_config` reads these fields from them, and `keys` maps each field to the key the user sets,
    so that a range error names `optim.lr`, `fudge.lr` or `run.log_every`."""

    steps: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: str = "constant"  # cosine | linear | constant, after warm-up
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None  # None or 0: no clipping
    ema_decay: float | None = None  # None: no EMA
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    # with max_minutes, the schedule advances by whichever budget is further spent, steps or minutes
    anneal_by_time: bool = False
    log_every: int = 50
    checkpoint_every: int = 250
    batch_size: int | None = None  # checked here for the trainers that batch; the loop itself does not
    seed: int | None = None  # likewise: a trainer's seed must fit torch's generators (times batch_indices' factor)
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward (module.compile(): weights and their names unchanged)
    keys: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.validate()

    def key(self, name: str) -> str:
        return self.keys.get(name, name)

    def validate(self) -> None:
        """Every range in one place; a bad value is a one-line UserError naming the user's key."""
        def fail(name: str, want: str):
            raise UserError(f"{self.key(name)} must be {want}, got {getattr(self, name)!r}")

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, least in (("steps", 0), ("warmup", 0), ("log_every", 1), ("checkpoint_every", 1)):
            if not integer(getattr(self, name)) or getattr(self, name) < least:
                fail(name, f"an integer >= {least}")
        if self.batch_size is not None and (not integer(self.batch_size) or self.batch_size < 1):
            fail("batch_size", "an integer >= 1")
        if self.batch_size is not None and self.batch_size > MAX_BATCH:  # a batch no memory holds
            fail("batch_size", f"at most {MAX_BATCH:,}")
        if self.seed is not None and (not integer(self.seed) or abs(self.seed) >= MAX_SEED):
            fail("seed", f"an integer of magnitude below {MAX_SEED:,}")
        if not number(self.lr) or self.lr <= 0:
            fail("lr", "a finite number > 0")
        if not number(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a finite number >= 0")
        if self.grad_clip is not None and (not number(self.grad_clip) or self.grad_clip < 0):
            fail("grad_clip", "a number >= 0 or null")
        if self.ema_decay is not None and (not number(self.ema_decay) or not 0 <= self.ema_decay < 1):
            fail("ema_decay", "in [0, 1)")
        if not number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            fail("min_lr_ratio", "in [0, 1]")
        if self.max_minutes is not None and (not number(self.max_minutes) or self.max_minutes <= 0):
            fail("max_minutes", "a number > 0 or null")
        if len(self.betas) != 2 or not all(number(b) and 0 <= b < 1 for b in self.betas):
            fail("betas", "two numbers in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown {self.key('schedule')} {self.schedule!r}; choose cosine, linear or constant")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown {self.key('precision')} {self.precision!r}; choose auto, fp32 or bf16")
        if not isinstance(self.compile, bool):
            fail("compile", "true or false")


def loop_config(sections: dict[str, Any], keys: dict[str, str] | None = None, **fixed) -> LoopConfig:
    """A checked LoopConfig from a trainer's config sections ({"optim": optim, "run": run}).

    Each loop field is read from the first section with an attribute of that name, and errors name it
    `section.field`; `fixed` sets the fields a trainer does not expose (FUDGE's grad_clip=1.0), and
    `keys` renames a field in messages (a trainer counting `epochs` passes steps=epochs first).
    """
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for f in fields(LoopConfig):
        if f.name == "keys":
            continue
        if f.name in fixed:
            values[f.name] = fixed.pop(f.name)
            continue
        for section, obj in sections.items():
            if hasattr(obj, f.name):
                values[f.name], names[f.name] = getattr(obj, f.name), f"{section}.{f.name}"
                break
    if fixed:
        raise TypeError(f"unknown LoopConfig fields {sorted(fixed)}")
    return LoopConfig(**values, keys={**names, **(keys or {})})


def lr_at(step: int, o, minutes: float | None = None) -> float:
    """The learning rate at `step` (warm-up, then the schedule), `minutes` of training in.

    `o` needs lr, warmup, steps, schedule, min_lr_ratio; with `minutes`, also anneal_by_time and max_minutes.
    """
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    if o.schedule == "constant":
        return o.lr
    progress = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    if minutes is not None and o.anneal_by_time and o.max_minutes:
        progress = max(progress, min(1.0, minutes / o.max_minutes))
    if o.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif o.schedule == "linear":
        factor = 1 - progress
    else:
        raise UserError(f"unknown schedule {o.schedule!r}; choose cosine, linear or constant")
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * factor)


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows for `step`: epochs are seeded permutations, so resuming needs only the step."""
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        rows += perm[offset: offset + batch_size - len(rows)].tolist()
    return torch.tensor(rows)


def noise_stream(out, requested: bool, key: str) -> bool:
    """Whether a run draws each step's noise from a generator seeded by the step (rather than the global RNG).

    Under torchrun it must: every rank then draws the same global batch's noise and keeps its own slice, so
    N processes train what one process trains with `key`=true. The stream is chosen when the run starts and
    kept by every resume (out/noise_stream.json); a global-RNG run cannot resume step-seeded (its noise so
    far came from a stream no rank can redraw), which is refused in one line."""
    out = Path(out)
    path = out / "noise_stream.json"
    seeded = bool(requested or distributed.world()[1] > 1)
    if has_checkpoint(out):
        was = bool(load_json(path).get("step_seeded", False)) if path.exists() else False
        if seeded and not was:
            raise UserError(f"{out} was started with the global RNG's noise, so it resumes in one process without "
                            f"{key} (runs meant for torchrun start with {key}=true)")
        return was
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_json(path, {"step_seeded": seeded})
    return seeded


# ---- extra state a trainer registers ------------------------------------------------------------
@dataclass
class Extra:
    """State for the checkpoint from two functions: tensors ride in state.safetensors, other values
    (numbers, lists, dicts) in state.json."""

    state: Callable[[], dict]
    load_state: Callable[[dict], None]


def generator_state(gen: torch.Generator) -> Extra:
    """A torch.Generator's stream as checkpoint state (a trainer drawing its batches from one)."""
    return Extra(lambda: {"state": gen.get_state()}, lambda s: gen.set_state(s["state"]))


# ---- checkpoints (safetensors + JSON, no pickle) ------------------------------------------------
def has_checkpoint(out) -> bool:
    out = Path(out)
    return (out / "checkpoint").exists() or (out / "checkpoint.old").exists()


def _state(model, optimizer, ema, extra) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():  # tied weights (a GPT-2's wte and lm_head) share storage:
        ptr = v.data_ptr()                    # safetensors wants each stored once, so the copies are cloned
        tensors[f"model.{k}"] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    json_extra: dict[str, dict] = {}
    for name, obj in (extra or {}).items():
        for k, v in obj.state().items():
            if torch.is_tensor(v):
                tensors[f"{name}.{k}"] = v
            else:
                json_extra.setdefault(name, {})[k] = v
    tensors.update({f"ema.{k}": v for k, v in (ema or {}).items()})
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"opt.{idx}.{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors, {"param_groups": opt["param_groups"], "extra": json_extra}


def save_checkpoint(out, step: int, elapsed: float, model, optimizer, ema: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write checkpoint.tmp/ completely, then swap it in; a kill leaves the old or the new one."""
    out = Path(out)
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors, meta = _state(model, optimizer, ema, extra)
    save_tensors(tmp / "state.safetensors", tensors)
    save_json(tmp / "state.json", {"step": step, "elapsed_s": elapsed, **meta})
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out, model, optimizer, ema: dict | None = None, extra: dict | None = None) -> tuple[int, float]:
    """Restore what save_checkpoint wrote; returns (step, elapsed seconds)."""
    out = Path(out)
    ck = out / "checkpoint"
    if not ck.exists() and (out / "checkpoint.old").exists():
        ck = out / "checkpoint.old"  # killed between the two renames
    meta = load_json(ck / "state.json")
    tensors = load_tensors(ck / "state.safetensors")
    try:
        return _restore(ck, meta, tensors, model, optimizer, ema, extra)
    except UserError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
        what = f"no {e.args[0]!r}" if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: " + \
            (str(e).strip().splitlines() or [""])[0][:120]
        raise UserError(f"{ck} is incomplete or corrupt ({what}); delete it to train afresh") from None


def _restore(ck: Path, meta, tensors: dict, model, optimizer, ema, extra) -> tuple[int, float]:
    if not isinstance(meta, dict):
        raise UserError(f"{ck / 'state.json'} must hold a JSON object, not {type(meta).__name__}")
    step, elapsed = meta["step"], meta["elapsed_s"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{ck / 'state.json'}: step must be an integer >= 0, got {step!r}")
    if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or not math.isfinite(elapsed) or elapsed < 0:
        raise UserError(f"{ck / 'state.json'}: elapsed_s must be a number >= 0, got {elapsed!r}")
    load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(ck))
    for k in ema or {}:
        if f"ema.{k}" not in tensors:
            raise UserError(f"{ck}: the checkpoint has no EMA weights for {k}")
        ema[k].copy_(tensors[f"ema.{k}"])
    for name, obj in (extra or {}).items():
        state = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(f"{name}.")}
        state.update(meta.get("extra", {}).get(name, {}))
        if state:  # a checkpoint from before the trainer registered this state starts it afresh
            obj.load_state(state)
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return step, float(elapsed)


# ---- the loop ----------------------------------------------------------------------------------
@dataclass
class LoopState:
    """What the hooks see: the step just finished, its rounded loss terms and lr, the EMA weights."""

    step: int
    started: float
    ema: dict | None = None
    last: dict = field(default_factory=dict)
    lr: float = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.started


@dataclass
class FitResult:
    step: int
    elapsed_s: float
    last: dict  # the last step's loss terms, rounded
    ema: dict | None
    stopped: str  # steps | time (max_minutes) | hook (on_step asked to stop)


def fit(model: torch.nn.Module, loss_fn: Callable, cfg: LoopConfig, out, *, name: str = "model",
        progress: bool = True, extra: dict | None = None, on_step: Callable[[LoopState], Any] | None = None,
        on_checkpoint: Callable[[LoopState], None] | None = None, backward: bool = True) -> FitResult:
    """Train `model` from step 0, or from `out/checkpoint` where one exists, to `cfg.steps`.

    loss_fn(step) returns the batch loss, or (loss, {term: value}) to log more terms. With
    backward=False it has already back-propagated (a loss summed over sub-batches) and returns the
    total as a number. on_step(state) runs after each step, before that step's checkpoint (so the
    checkpoint holds what it changed in `extra`), and a true result stops the run (checkpointed);
    on_checkpoint(state) runs after each checkpoint (to write the model a user loads).
    """
    out = Path(out)
    main = distributed.is_main()  # under torchrun, rank 0 alone writes (see diffusion_lm.distributed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        # a kill while a checkpoint was written leaves checkpoint.tmp/ (never read: the old one is whole) and
        # atomic_write's .<name>.<random>.tmp files; neither is kept
        shutil.rmtree(out / "checkpoint.tmp", ignore_errors=True)
        remove_stale_temps(out)
    distributed.barrier()
    for n in extra or {}:
        if n in _RESERVED or "." in n:
            raise ValueError(f"extra state name {n!r} is reserved or has a dot")
    keep_freed_memory()
    distributed.broadcast_module(model)  # under torchrun every rank starts from rank 0's weights
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    # bf16 autocast (and TF32) on GPUs, fp32 on the CPU; the weights, optimizer and checkpoints stay fp32
    precision = resolve_precision(cfg.precision, device, cfg.key("precision"))
    allow_tf32(device)
    if cfg.compile:
        model.compile()  # in place: the forward is compiled on first use, state_dict keys unchanged
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.ema_decay is not None else None
    step, elapsed = load_checkpoint(out, model, optimizer, ema, extra) if has_checkpoint(out) else (0, 0.0)
    log_path = out / "train_log.jsonl"
    if main:
        _truncate_log(log_path, step)  # rows a killed run wrote after its last checkpoint are redone
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes the next

    if ema is not None:  # pairs built once: state_dict tensors share storage with the parameters
        now = model.state_dict()
        ema_float = [ema[k] for k, v in now.items() if v.dtype.is_floating_point]
        now_float = [v for v in now.values() if v.dtype.is_floating_point]
        ema_other = [(ema[k], v) for k, v in now.items() if not v.dtype.is_floating_point]
    model.train()
    state = LoopState(step=step, started=time.time() - elapsed, ema=ema)

    def checkpoint():
        if main:
            save_checkpoint(out, state.step, state.elapsed_s, model, optimizer, ema, extra)
            if on_checkpoint is not None:
                on_checkpoint(state)

    stopped = "steps"
    parallel = distributed.world()[1] > 1
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {name}", disable=not progress or not main,
               dynamic_ncols=True)
    try:
        while state.step < cfg.steps:
            minutes = state.elapsed_s / 60
            if parallel:  # every rank stops at the same step: rank 0's clock decides
                minutes = distributed.mean({"m": minutes if main else 0.0})["m"] * distributed.world()[1]
            if cfg.max_minutes is not None and minutes > cfg.max_minutes:
                stopped = "time"
                break
            lr = lr_at(state.step, cfg, minutes)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                loss, terms = _loss_and_terms(loss_fn(state.step))
            # the ranks' mean: the global batch's loss terms (one all-reduce; each rank's own without torchrun)
            logged = distributed.mean({k: float(v.item() if torch.is_tensor(v) else v) for k, v in terms.items()})
            if not math.isfinite(logged["loss"]):
                kept = (f"the last good checkpoint is kept in {out}" if has_checkpoint(out)
                        else "no checkpoint was written yet")
                raise UserError(f"{name} loss became {logged['loss']} at step {state.step}; {kept} "
                                f"(try a lower {cfg.key('lr')})")
            if backward:
                loss.backward()
            distributed.average_gradients(params)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if ema is not None:
                with torch.no_grad():
                    decay = min(cfg.ema_decay, (1 + state.step) / (10 + state.step))
                    torch._foreach_lerp_(ema_float, now_float, 1 - decay)
                    for e, v in ema_other:
                        e.copy_(v)
            state.step += 1
            bar.update(1)
            state.last = {k: round(v, 5) for k, v in logged.items()}
            state.lr = lr
            if main and (state.step % cfg.log_every == 0 or state.step == cfg.steps):
                bar.set_postfix(loss=f"{state.last['loss']:.3f}", lr=f"{lr:.1e}")
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": state.step, "elapsed_s": round(state.elapsed_s, 1), "lr": lr,
                                        **state.last}) + "\n")
            stop = on_step is not None and bool(on_step(state))  # before the checkpoint, which keeps its effects
            if parallel:  # any rank's stop stops them all, at the same step
                stop = distributed.mean({"stop": float(stop)})["stop"] > 0
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                checkpoint()
            if stop:
                stopped = "hook"
                break
    finally:
        bar.close()
    if state.step % cfg.checkpoint_every and state.step != cfg.steps:  # stopped early: keep where it got to
        checkpoint()
    result = FitResult(step=state.step, elapsed_s=state.elapsed_s, last=state.last, ema=ema, stopped=stopped)
    if main:
        plot_losses(log_path, out / "loss_curve.png", f"{name} training")
    distributed.barrier()  # every rank leaves with rank 0's files written
    return result


def _loss_and_terms(value) -> tuple[torch.Tensor, dict]:
    loss, terms = value if isinstance(value, tuple) else (value, {})
    if not torch.is_tensor(loss):
        loss = torch.tensor(float(loss))
    return loss, (dict(terms) if "loss" in terms else {"loss": loss, **terms})


def _truncate_log(log_path: Path, step: int) -> None:
    if log_path.exists():
        rows = [r for r in read_jsonl(log_path, "training log") if r.get("step", 0) <= step]
        write_jsonl(log_path, rows)


def plot_losses(log_path: Path, png: Path, title: str) -> None:
    """The logged loss terms against the step (log scale where every value is positive)."""
    if not log_path.exists():
        return
    rows = read_jsonl(log_path, "training log")
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, v in rows[0].items() if k not in ("step", "elapsed_s", "lr", "epoch")
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        ax.plot([r["step"] for r in rows], [r.get(k, math.nan) for r in rows], label=k)
    if all(r.get(k, 1) > 0 for r in rows for k in keys):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (batch mean)")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
