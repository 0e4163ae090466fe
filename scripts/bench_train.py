"""Training throughput of the Diffusion-LM denoiser (or the image UNet) against this machine's fp32 matmul speed.

    python scripts/bench_train.py [preset=cpu] [steps=10] [rounds=5] [profile=0] [key=value ...]
    python scripts/bench_train.py model=unet [unet_preset=cpu|cpu_pixel] [steps=10] [rounds=5] [key=value ...]
    python scripts/bench_train.py [model=...] procs=2 ...   also the whole step under torchrun, 2 processes

procs=N times the same global batch's whole step again under `torchrun --nproc_per_node=N` (each process
a slice, gradients all-reduced over gloo) and prints it beside the one-process figure of the same run.

model=unet times the caption-conditioned UNet of `diffusion-lm train-unet` instead, on its preset's
batch of latents (4 x 8 x 8, as the shipped autoencoder makes) or pixels, with caption states as wide
and as long as the shipped CLIP's: the UNet alone (forward and backward of its v- or
eps-loss) and the whole step (clipping and AdamW on top). Frozen parts are outside the step, as in
training, where every latent and caption state is computed once before the first step.

Times two workloads on the preset's batch: the denoiser f_θ alone (forward and backward of its
squared error, with the self-conditioning input when the preset has one) and the whole training
step (the rounding and anchor cross-entropies, the self-conditioning pass, clipping and AdamW on
top). For each it prints tokens/s, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode with
the CPU attention kernel added, diffusion_lm/flops.py; the optimizer is outside the count but
inside the time) and the ratio to the fp32 matmul GFLOP/s measured in the same run.

This machine is a shared VM whose speed drifts by tens of percent within a minute, so the matmul
and the workloads are measured in alternating rounds and each is taken at its best round, as
timeit does (medians printed beside). Each side is a sustained rate: a workload round is `steps`
steps, a matmul round is back-to-back 2048³ products for as long as the last step round took.
The fastest single product (a burst the VM does not sustain) is printed too, with the ratio
against it. profile=N also prints the N operators that took the most time in the whole step
(torch.profiler, grouped by input shape). Extra key=value pairs are train-config overrides.
"""
from __future__ import annotations

import json
import time

import torch

from diffusion_lm import distributed
from diffusion_lm.config import build
from diffusion_lm.core import GaussianDiffusion
from diffusion_lm.config import compose
from diffusion_lm.flops import flop_counter
from diffusion_lm.runtime import adamw, keep_freed_memory
from diffusion_lm.text.loss import diffusion_lm_loss
from diffusion_lm.text.model import DiffusionLM


def matmul_round(seconds: float, n: int = 2048) -> tuple[float, float]:
    """fp32 GFLOP/s of n³ products run back to back for `seconds`: (sustained over the round, fastest one)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times: list[float] = []
    while sum(times) < seconds or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    flop = 2 * n**3
    return flop * len(times) / sum(times) / 1e9, flop / min(times) / 1e9


def clip_states() -> tuple[int, int]:
    """(length, width) of the shipped CLIP's caption states: its max_len and text width."""
    import json
    from pathlib import Path

    from diffusion_lm.assets import resolve_asset

    cfg = json.loads((Path(resolve_asset("shipped", "model", "image-clip")) / "config.json").read_text())
    return int(cfg["max_len"]), int(cfg["width"])


def unet_workloads(overrides: list[str]):
    """(description, result header, runs, step) of the image UNet on its preset's batch."""
    from diffusion_lm.image.train import unet_loss
    from diffusion_lm.image.unet import UNet

    if not any(o.startswith("unet_preset=") for o in overrides):
        overrides.append("unet_preset=cpu")
    cfg = compose("train_unet", overrides)
    unet_cfg, train = build(cfg, "unet"), build(cfg, "train")
    diffusion = GaussianDiffusion.from_config(build(cfg, "diffusion"))
    if train.threads:
        torch.set_num_threads(train.threads)
    unet_cfg.in_channels, unet_cfg.image_size = (4, 8) if unet_cfg.space == "latent" else (3, 32)
    CLIP_STATES = clip_states()
    unet_cfg.context_dim = CLIP_STATES[1]
    torch.manual_seed(0)
    model = UNet(unet_cfg)
    opt = adamw(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    B, C, S = train.batch_size, unet_cfg.in_channels, unet_cfg.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"x0": torch.randn(B, C, S, S, generator=g), "t": torch.randint(0, diffusion.num_timesteps, (B,), generator=g),
             "noise": torch.randn(B, C, S, S, generator=g), "context": torch.randn(B, *CLIP_STATES, generator=g),
             "context_mask": torch.arange(CLIP_STATES[0]).expand(B, -1) < torch.randint(6, CLIP_STATES[0] + 1, (B, 1), generator=g)}

    def denoise():
        loss = unet_loss(model, diffusion, batch)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def step():  # what `diffusion-lm train-unet` does a step, but for the EMA and the lr schedule
        loss = unet_loss(model, diffusion, distributed.shard(batch))  # under torchrun: this process's slice
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(list(model.parameters()))
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()

    header = {"model": "unet", "preset": cfg.preset_name, "space": unet_cfg.space, "parameters": model.num_parameters(),
              "batch": B, "input": [C, S, S], "context": list(CLIP_STATES), "malloc_keeps_freed_memory": keep_freed_memory()}
    what = (f"image UNet `{cfg.preset_name}` ({header['parameters']:,} params, {unet_cfg.space}, batch {B} x {C} x {S} x {S}, "
            f"caption states {CLIP_STATES[0]} x {CLIP_STATES[1]}")
    names = {"denoiser": "UNet, forward + backward", "step": "whole training step (+ clipping, AdamW)"}
    return what, header, {"step": step, "denoiser": denoise}, names, B, "images"


def main(argv: list[str]) -> None:
    from diffusion_lm.scripting import fail, number

    bare = [a for a in argv if "=" not in a]
    if bare:
        fail(f"expected key=value arguments, got {bare[0]!r}")
    args = dict(a.split("=", 1) for a in argv)  # keys other than steps are train-config overrides
    steps = number({"steps": args.pop("steps", "10")}, "steps", minimum=1)
    rounds = number({"rounds": args.pop("rounds", "5")}, "rounds", minimum=1)
    top = number({"profile": args.pop("profile", "0")}, "profile", minimum=0)
    which = args.pop("model", "diffusion-lm")
    if which not in ("diffusion-lm", "unet"):
        fail(f"model must be diffusion-lm or unet, got {which!r}")
    procs = number({"procs": args.pop("procs", "1")}, "procs", minimum=1)
    worker = args.pop("_worker", "0") == "1"
    overrides = [f"{k}={v}" for k, v in args.items()]
    if worker:  # one of `procs` processes under torchrun: time the whole step on a slice of the global batch
        distributed.setup()
        return time_workers(which, overrides, steps, rounds)
    what, header, runs, names, per_step, unit = (unet_workloads if which == "unet" else text_workloads)(overrides)
    result = report(what, header, runs, names, per_step, unit, steps, rounds, top)
    side_by_side(result, argv, procs, unit)


def text_workloads(overrides: list[str]):
    """(description, result header, runs, names, tokens per step, unit) of the Diffusion-LM on its preset's batch."""
    if not any(o.startswith("preset=") for o in overrides):
        overrides.append("preset=cpu")
    cfg = compose("train", overrides)
    data, model_cfg, optim = build(cfg, "data"), build(cfg, "model"), build(cfg, "optim")
    diffusion = GaussianDiffusion.from_config(build(cfg, "diffusion"))
    if optim.threads:
        torch.set_num_threads(optim.threads)
    kept = keep_freed_memory()  # as `diffusion-lm train` does
    model_cfg.vocab_size, model_cfg.max_len = 1200, data.max_len  # E2E vocabulary size at min_freq 5
    torch.manual_seed(0)
    model = DiffusionLM(model_cfg)
    opt = adamw(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)  # as `diffusion-lm train` does
    B, L = optim.batch_size, data.max_len
    ids = torch.randint(4, model_cfg.vocab_size, (B, L))

    def step():  # what `diffusion-lm train` does a step, but for the EMA and the lr schedule
        loss = diffusion_lm_loss(model, diffusion, distributed.shard(ids), anchor_weight=optim.anchor_weight)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(list(model.parameters()))
        if optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()

    # The denoiser alone: f_θ(x_t, t[, x̂_0]) → x̂_0, forward and backward of its squared error.
    x0 = model.embed(ids).detach()
    t = torch.randint(0, diffusion.num_timesteps, (B,))
    x_t = diffusion.q_sample(x0, t)
    prev = x0 + 0.1 * torch.randn_like(x0) if model_cfg.self_condition else None

    def denoise():
        loss = (model(x_t, t, prev) - x0).pow(2).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()

    runs = {"step": step, "denoiser": denoise}
    header = {"preset": cfg.preset_name, "parameters": model.num_parameters(), "batch": B, "seq_len": L,
              "malloc_keeps_freed_memory": kept}
    what = f"Diffusion-LM `{cfg.preset_name}` ({header['parameters']:,} params, batch {B} x {L} tokens"
    names = {"denoiser": "denoiser f_θ, forward + backward",
             "step": "whole training step (+ rounding and anchor losses, self-conditioning pass, clipping, AdamW)"}
    return what, header, runs, names, B * L, "tokens"


def workloads(which: str, overrides: list[str]):
    """(runs, examples per step, unit) of `which`, as the one-process benchmark builds them."""
    _, _, runs, _, per_step, unit = (unet_workloads if which == "unet" else text_workloads)(list(overrides))
    return runs, per_step, unit


def time_workers(which: str, overrides: list[str], steps: int, rounds: int) -> None:
    """Under torchrun: the whole training step on this process's slice, gradients averaged; rank 0 prints
    the best round's seconds per global step as JSON."""
    runs, per_step, unit = workloads(which, overrides)
    step = runs["step"]
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(rounds):
        distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        distributed.barrier()
        best = min(best, (time.perf_counter() - t0) / steps)
    if distributed.is_main():
        print(json.dumps({"procs": distributed.world()[1], "s": round(best, 4),
                          f"{unit}_per_s": round(per_step / best, 1),
                          "threads_per_process": torch.get_num_threads()}))


def side_by_side(result: dict, argv: list[str], procs: int, unit: str) -> None:
    """With procs > 1: the same global batch's whole step under torchrun with `procs` processes, printed
    beside the one-process figure measured just before (same run, so the VM's drift is shared)."""
    if procs == 1:
        return
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    from diffusion_lm.scripting import fail

    if not torchrun.exists():
        fail(f"procs={procs} needs torchrun beside {sys.executable}")
    if result["batch"] % procs:
        fail(f"the batch of {result['batch']} does not split evenly over procs={procs}")
    keep = [a for a in argv if not a.startswith(("procs=", "profile="))]
    cmd = [str(torchrun), "--standalone", f"--nproc_per_node={procs}", __file__, *keep, "_worker=1"]
    # each process gets the threads the one-process figure had, split evenly (torchrun would give it 1)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": str(max(1, result["threads"] // procs))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        fail(f"the {procs}-process run failed: {(errors or done.stderr.strip().splitlines() or ['no output'])[0]}")
    multi = json.loads(lines[-1])
    one = result["step"]
    print(f"  processes: 1 x {result['threads']} threads {one[f'{unit}_per_s']:,.0f} {unit}/s;  {procs} x "
          f"{multi['threads_per_process']} threads {multi[f'{unit}_per_s']:,.0f} {unit}/s  "
          f"(ratio {multi[f'{unit}_per_s'] / one[f'{unit}_per_s']:.2f}; the same global batch, gloo all-reduce)")
    print(json.dumps({"procs_side_by_side": {"1": one[f"{unit}_per_s"], str(procs): multi[f"{unit}_per_s"]}}))


def report(what: str, header: dict, runs: dict, names: dict, per_step: int, unit: str, steps: int, rounds: int,
           top: int) -> None:
    """Time `runs` (step and denoiser) against the matmul in alternating rounds; print the figures and JSON."""
    step = runs["step"]
    flops = {}
    for name, fn in runs.items():
        for _ in range(3):
            fn()
        # FLOPs vary with the self-conditioning coin flips; average them over the counted steps.
        counter = flop_counter()
        with counter:
            for _ in range(steps):
                fn()
        flops[name] = counter.get_total_flops() / steps
    peaks, bursts, times = [], [], {name: [] for name in runs}
    round_s = 1.0
    for _ in range(rounds):  # timed without the counter's overhead, alternating with the matmul
        sustained, burst = matmul_round(round_s)
        peaks.append(sustained)
        bursts.append(burst)
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
        round_s = max(1.0, steps * times["step"][-1])
    peak, burst = max(peaks), max(bursts)
    result = {**header, "threads": torch.get_num_threads(), "matmul_gflops": round(peak, 1),
              "matmul_burst_gflops": round(burst, 1), "matmul_rounds": [round(p, 1) for p in peaks]}
    for name in runs:
        best = min(times[name])
        achieved = flops[name] / best / 1e9
        result[name] = {"s": round(best, 4), "median_s": round(sorted(times[name])[len(times[name]) // 2], 4),
                        f"{unit}_per_s": round(per_step / best, 1), "gflop": round(flops[name] / 1e9, 2),
                        "achieved_gflops": round(achieved, 1), "ratio": round(achieved / peak, 3),
                        "ratio_to_burst": round(achieved / burst, 3), "rounds_s": [round(x, 4) for x in times[name]]}
    print(f"{what}, {result['threads']} threads), best of {rounds} rounds of {steps}:")
    for name in ("denoiser", "step"):
        r = result[name]
        print(f"  {names[name]}: {r['s']:.3f} s (median {r['median_s']:.3f}), {r['gflop']} GFLOP")
        print(f"    {unit}/s {r[f'{unit}_per_s']:>10,.0f}   achieved GFLOP/s {r['achieved_gflops']:>6.1f}   "
              f"ratio {r['ratio']:.3f}   (to the burst: {r['ratio_to_burst']:.3f})")
    print(f"  fp32 matmul GFLOP/s {peak:.1f} sustained (2048^3 back to back, best of {rounds} rounds; rounds "
          f"ranged {min(peaks):.0f}-{max(peaks):.0f}); fastest single product {burst:.1f}")
    print(f"  ratio: denoiser {result['denoiser']['ratio']:.3f}, whole step {result['step']['ratio']:.3f}"
          + (" (target >= 0.5)" if unit == "tokens" else ""))
    print(json.dumps(result))
    return result if not top else _profile(step, steps, top, result)


def _profile(step, steps: int, top: int, result: dict) -> dict:
    if top:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(steps):
                step()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=top))
    return result


if __name__ == "__main__":
    from diffusion_lm.scripting import run_script

    run_script(main)
