"""Data parallelism under torchrun on the CPU (gloo): two processes give the weights one process gives with the
same global batch, and a run killed under two processes resumes to the same weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lm import distributed

DRIVER = Path(__file__).parent / "ddp_unet_run.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(out: Path, procs: int, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(out)] + ([str(kill_at)] if kill_at is not None else [])
    if procs == 1:
        cmd = [sys.executable, str(DRIVER), *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={procs}", str(DRIVER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint" / "state.safetensors"))


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_two_processes_train_the_weights_one_process_trains_and_resume_after_a_kill(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    assert launch(one, 1).returncode == 0
    r = launch(two, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = weights(one), weights(two)
    model_keys = [k for k in a if k.startswith(("model.", "ema."))]
    assert model_keys and all(k in b for k in model_keys)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in model_keys)
    assert worst <= 1e-5, worst
    # rank 0 alone wrote the log; its losses are the global batch's, as one process logs them
    la = [json.loads(x) for x in (one / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(la, lb))
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    # killed during step 6 under two processes (checkpoint at 4), resumed under two: the unbroken run's weights
    assert launch(killed, 2, kill_at=6).returncode != 0
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["step"] == 4
    assert launch(killed, 2).returncode == 0
    c = weights(killed)
    assert max(float((b[k].float() - c[k].float()).abs().max()) for k in model_keys) <= 1e-6
    # killed under two processes, resumed under one: still the same weights (any N resumes any N's run)
    other = tmp_path / "other"
    assert launch(other, 2, kill_at=6).returncode != 0
    assert launch(other, 1).returncode == 0
    d = weights(other)
    assert max(float((a[k].float() - d[k].float()).abs().max()) for k in model_keys) <= 1e-5


def launch_text(out: Path, procs: int, *extra: str) -> subprocess.CompletedProcess:
    """diffusion-lm train preset=tiny (warped timesteps, so the sampler's state must agree across ranks)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", "preset=tiny", f"run.out_dir={out}", "optim.steps=12", "optim.batch_size=8",
            "optim.t_sampling=warped", "optim.step_seeded_noise=true", "run.final_samples=0",
            "run.checkpoint_every=4", *extra]
    if procs == 1:
        cmd = [sys.executable, "-m", "diffusion_lm", *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={procs}", "-m", "diffusion_lm", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_diffusion_lm_under_two_processes_trains_what_one_process_trains(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = launch_text(one, 1)
    assert r.returncode == 0, r.stderr[-2000:]
    r = launch_text(two, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = weights(one), weights(two)
    keys = [k for k in a if k.startswith(("model.", "ema.", "tsampler."))]
    assert any(k.startswith("tsampler.") for k in keys)

    def effective(k, v):
        # the attention's key bias has no effect (softmax is invariant to it): its true gradient is 0, and AdamW
        # turns the ~1e-10 rounding left in it into lr-sized steps of either sign, so it is left out
        if k.endswith("qkv.bias"):
            third = v.shape[0] // 3
            return torch.cat([v[:third], v[2 * third:]])
        return v

    worst = max(float((effective(k, a[k]).float() - effective(k, b[k]).float()).abs().max()) for k in keys)
    assert worst <= 1e-5, worst
    logs = [[json.loads(x)["loss"] for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two)]
    assert logs[0] == logs[1]


def test_one_process_is_untouched_and_uneven_batches_are_refused(monkeypatch):
    from diffusion_lm.errors import UserError

    assert distributed.world() == (0, 1) and distributed.is_main()
    x = torch.arange(6)
    assert distributed.shard(x) is x and distributed.mean({"loss": 2.5}) == {"loss": 2.5}
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert distributed.shard(x).tolist() == [3, 4, 5]
    assert distributed.shard({"a": x, "s": 3.0})["s"] == 3.0
    with pytest.raises(UserError, match="does not split evenly over 2 processes"):
        distributed.check_batch(7)


def test_step_seeded_noise_uses_the_timestep_samplers_t(tmp_path, monkeypatch):
    """Under step_seeded_noise the loss gets the (warped) timestep sampler's t, drawn from the step's generator,
    not the uniform t that loss_draws also makes."""
    from diffusion_lm.cli.main import run
    from diffusion_lm.core.timesteps import TimestepSampler
    from diffusion_lm.text import train as text_train

    seen = []
    real = text_train.diffusion_lm_loss

    def spy(*args, **kw):
        seen.append(kw["t"].clone())
        return real(*args, **kw)

    monkeypatch.setattr(text_train, "diffusion_lm_loss", spy)
    assert run(["train", "preset=tiny", f"run.out_dir={tmp_path}", "optim.steps=1", "optim.batch_size=8",
                "optim.t_sampling=warped", "optim.step_seeded_noise=true", "run.final_samples=0"]) == 0
    expect = TimestepSampler(100, "warped").sample(8, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(seen[0], expect)  # (before the fix, loss_draws' uniform t from the same stream won)
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["noise_stream"] == {"step_seeded": True}
    # the run's stream is kept: resuming without the flag stays step-seeded; a global-RNG run refuses the flag
    assert run(["train", "preset=tiny", f"run.out_dir={tmp_path}", "optim.steps=2", "optim.batch_size=8",
                "optim.t_sampling=warped", "run.final_samples=0"]) == 0
    assert len(seen) == 2
    other = tmp_path / "global"
    assert run(["train", "preset=tiny", f"run.out_dir={other}", "optim.steps=1", "optim.batch_size=8",
                "run.final_samples=0"]) == 0
    assert run(["train", "preset=tiny", f"run.out_dir={other}", "optim.steps=2", "optim.batch_size=8",
                "optim.step_seeded_noise=true", "run.final_samples=0"]) == 2
