"""Training a Diffusion-LM: its model, batches and loss, in the shared loop (`diffusion_lm.training`).

Folder layout of a run (`out_dir`):
    config.json, model.safetensors, tokenizer.json   the EMA model, loadable by from_pretrained
    diffusion.json                                   the process it is trained with (core.DiffusionConfig)
    checkpoint/                                      raw weights, optimizer, EMA, RNG, step
    train_config.json, train_log.jsonl, loss_curve.png, samples.txt
A killed run restarts from `checkpoint/` with the same command.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import distributed
from ..runtime import pick_device
from ..core import DiffusionConfig, GaussianDiffusion
from ..errors import UserError
from ..data import DataConfig, load_e2e
from .generation import SampleConfig, check_sample_config, generate
from ..io import check_output_dir, load_json, save_json
from ..assets import resolve_checkpoint
from .io import from_pretrained, load_diffusion, save_pretrained
from ..core.timesteps import TimestepSampler
from ..training import batch_indices, fit, has_checkpoint, loop_config
from .loss import diffusion_lm_loss, loss_draws
from .model import DiffusionLM, DiffusionLMConfig, diffusion_config
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
    grad_clip: float | None = 1.0  # null or 0: no clipping
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
    # draw each step's noise and timesteps from a generator seeded by the step (on by itself under torchrun,
    # where each process takes a slice of them); off, the global RNG draws them, as for the shipped models
    step_seeded_noise: bool = False
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on the CPU) | fp32 | bf16
    compile: bool = False  # torch.compile the model's forward
    # start a new run from a trained Diffusion-LM's weights (`shipped` or a model folder) instead of from
    # scratch: its tokenizer, its model shape (model.* must match it) and a fresh optimizer and lr schedule;
    # read only when the run starts, a resume continues from its own checkpoint
    init_from: str | None = None
    # keep the word embeddings as they are (no gradient): with init_from, the classifiers trained for the
    # starting model read the new one's noised embeddings unchanged, so they still guide it
    freeze_embeddings: bool = False


@dataclass
class RunConfig:
    out_dir: str = "runs/cpu"
    log_every: int = 25
    checkpoint_every: int = 200
    final_samples: int = 20
    snapshot_every: int | None = None  # keep the EMA model every N steps in snapshots/ (fluency-vs-time studies)
    sample: SampleConfig = field(default_factory=SampleConfig)


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


def _check_run(run: RunConfig, optim: OptimConfig) -> None:
    """The keys the shared loop does not check, before any work."""
    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not integer(run.final_samples) or run.final_samples < 0:
        raise UserError(f"run.final_samples must be an integer >= 0, got {run.final_samples!r}")
    if run.snapshot_every is not None and (not integer(run.snapshot_every) or run.snapshot_every < 1):
        raise UserError(f"run.snapshot_every must be an integer >= 1 or null, got {run.snapshot_every!r}")
    if not integer(optim.threads) or not 0 <= optim.threads <= 4096:
        raise UserError(f"optim.threads must be an integer in 0..4096 (0 = torch's default), got {optim.threads!r}")
    if not isinstance(optim.freeze_embeddings, bool):
        raise UserError(f"optim.freeze_embeddings must be true or false, got {optim.freeze_embeddings!r}")
    aw = optim.anchor_weight
    if isinstance(aw, bool) or not isinstance(aw, (int, float)) or not math.isfinite(aw) or aw < 0:
        raise UserError(f"optim.anchor_weight must be a finite number >= 0, got {aw!r}")


def _check_same_run(out: Path, model_cfg: dict, diffusion: DiffusionConfig) -> None:
    saved = load_json(out / "config.json")
    if not isinstance(saved, dict):
        raise UserError(f"{out / 'config.json'} must hold a JSON object, not {type(saved).__name__}")
    diff = [k for k in model_cfg if saved.get(k) != model_cfg[k]]
    if diff:
        k = diff[0]
        raise UserError(f"{out} holds a run with a different model ({k}: {saved.get(k)} there, "
                        f"{model_cfg[k]} now); choose another out_dir or delete it")
    there = load_diffusion(out).config
    if there != diffusion:
        raise UserError(f"{out} holds a run with a different diffusion ({there} there, {diffusion} now); "
                        f"choose another out_dir or delete it")


def train(data: DataConfig, model_cfg: DiffusionLMConfig, optim: OptimConfig, run: RunConfig,
          full_config: dict | None = None, progress: bool = True, diffusion: DiffusionConfig | None = None) -> dict:
    """Train (or resume) a Diffusion-LM; returns a summary with the final loss terms.

    `diffusion` is the process to train with (default Diffusion-LM's, `text.model.diffusion_config()`)."""
    try:
        diffusion = GaussianDiffusion.from_config(diffusion if diffusion is not None else diffusion_config())
    except ValueError as e:
        raise UserError(f"bad diffusion config: diffusion.{e}") from None
    out = Path(run.out_dir)
    loop = loop_config({"optim": optim, "run": run})
    _check_run(run, optim)
    if run.final_samples:
        check_sample_config(run.sample, diffusion, data.max_len, "run.sample")
    check_output_dir(run.out_dir, "run.out_dir")  # before any work: a file there, or a read-only folder
    distributed.barrier()  # every rank has checked (and cleared stale temporaries) before rank 0 writes
    resuming = has_checkpoint(out)
    if optim.threads:
        torch.set_num_threads(optim.threads)
    torch.manual_seed(optim.seed)
    init = None
    if optim.init_from is not None and not resuming:
        if not isinstance(optim.init_from, str) or not optim.init_from.strip():
            raise UserError(f"optim.init_from must name a model folder or `shipped`, got {optim.init_from!r}")
        init_dir = resolve_checkpoint(optim.init_from)
        init_model, init_tok, _ = from_pretrained(init_dir)
        init = (init_dir, init_model, init_tok)
    tokenizer = WordTokenizer.load(out) if resuming else (init[2] if init else None)
    ids, tokenizer = build_dataset(data, tokenizer)
    model_cfg.vocab_size = len(tokenizer)
    model_cfg.max_len = data.max_len
    device = pick_device(optim.device, "optim.device")
    model = DiffusionLM(model_cfg).to(device)
    if resuming:
        _check_same_run(out, model.config_dict(), diffusion.config)
    elif init is not None:
        diff = [k for k, v in model.config_dict().items() if init[1].config_dict().get(k) != v]
        if diff:
            k = diff[0]
            raise UserError(f"optim.init_from: {init[0]} has {k}={init[1].config_dict().get(k)}, this run's model "
                            f"{k}={model.config_dict()[k]}; set model.{k} to match or train from scratch")
        model.load_state_dict(init[1].state_dict())
    if optim.freeze_embeddings:  # AdamW skips a parameter without a gradient: no update, no weight decay
        model.embedding.weight.requires_grad_(False)
    try:
        tsampler = TimestepSampler(diffusion.num_timesteps, optim.t_sampling)
    except ValueError as e:
        raise UserError(f"optim.t_sampling: {e}") from None
    distributed.check_batch(optim.batch_size, "optim.batch_size")
    # the noise stream belongs to the run: chosen when it starts, kept by every resume, under any number of processes
    seeded = bool(optim.step_seeded_noise or distributed.world()[1] > 1)
    if resuming:
        saved = load_json(out / "train_config.json") if (out / "train_config.json").exists() else {}
        was = bool(saved.get("noise_stream", {}).get("step_seeded", False)) if isinstance(saved, dict) else False
        if seeded and not was:
            raise UserError(f"{out} was started with the global RNG's noise, so it resumes in one process without "
                            f"optim.step_seeded_noise (runs meant for torchrun start with optim.step_seeded_noise=true)")
        seeded = was
        frozen = saved.get("optim", {}).get("freeze_embeddings", False) if isinstance(saved, dict) else False
        if bool(frozen) != optim.freeze_embeddings:  # a resume must not start (or stop) training the embeddings
            raise UserError(f"{out} was started with optim.freeze_embeddings={str(bool(frozen)).lower()}; resume it "
                            f"with the same setting (or choose another run.out_dir)")
    if not resuming and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_pretrained(model, tokenizer, out, diffusion=diffusion)  # config + tokenizer first, for resume to check
        save_json(out / "train_config.json", {**(full_config or {}), "noise_stream": {"step_seeded": seeded}})

    def loss_at(step: int):
        batch = ids[batch_indices(step, optim.batch_size, len(ids), optim.seed)]
        if not seeded:  # one process, the global RNG (the stream the shipped models were trained with)
            batch = batch.to(device)
            terms = diffusion_lm_loss(model, diffusion, batch, anchor_weight=optim.anchor_weight, per_example=True,
                                      t=tsampler.sample(len(batch), device))
            tsampler.update(terms.pop("t"), terms.pop("signal"))
            return terms["loss"], terms
        # every draw of the step's global batch from a generator seeded by the step, then this process's
        # slice: N processes train what one process trains with step_seeded_noise
        g = torch.Generator().manual_seed(optim.seed * 1_000_003 + step)
        t = tsampler.sample(len(batch), "cpu", generator=g)
        draws = loss_draws(len(batch), batch.shape[1], model.config.emb_dim, diffusion.num_timesteps, g)
        local = distributed.shard({**draws, "ids": batch, "t": t})  # t: the timestep sampler's, not draws' uniform one
        terms = diffusion_lm_loss(model, diffusion, local["ids"].to(device), anchor_weight=optim.anchor_weight,
                                  per_example=True, t=local["t"].to(device), draws=local)
        # the timestep sampler sees the global batch's losses, so it stays the same on every rank
        tsampler.update(distributed.gather(terms.pop("t").cpu()), distributed.gather(terms.pop("signal").cpu()))
        return terms["loss"], terms

    def write_model(state) -> None:  # the EMA model beside each checkpoint, loadable by from_pretrained
        save_pretrained(model, tokenizer, out, state_dict=state.ema, diffusion=diffusion)

    def snapshot(state) -> None:
        if run.snapshot_every and state.step % run.snapshot_every == 0 and distributed.is_main():
            snap = out / "snapshots" / f"step{state.step:07d}"
            save_pretrained(model, tokenizer, snap, state_dict=state.ema, diffusion=diffusion)
            save_json(snap / "progress.json", {"step": state.step, "elapsed_s": round(state.elapsed_s, 1)})

    result = fit(model, loss_at, loop, out, name="Diffusion-LM", progress=progress, extra={"tsampler": tsampler},
                 on_step=snapshot, on_checkpoint=write_model)
    summary = {"steps": result.step, "train_minutes": round(result.elapsed_s / 60, 2), "final_terms": result.last,
               "parameters": model.num_parameters(), "train_sentences": len(ids), "vocab_size": len(tokenizer),
               # the running denoising loss of each slice of timesteps (what t_sampling=warped draws by)
               "loss_by_t": [[int(lo), int(hi), round(float(v), 4)] for lo, hi, v, seen in
                             zip(tsampler.edges[:-1], tsampler.edges[1:], tsampler.loss, tsampler.seen) if seen]}
    if not distributed.is_main():  # rank 0 samples and writes
        return summary
    if run.final_samples:
        model.load_state_dict(result.ema)
        sents = generate(model, tokenizer, diffusion, run.final_samples, run.sample, progress=progress)
        (out / "samples.txt").write_text("\n".join(sents) + "\n")
        summary["samples"] = sents
    save_json(out / "summary.json", summary)
    return summary

