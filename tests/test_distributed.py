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


def effective(k, v):
    """A weight without its no-op part: the attention's key bias has no effect (softmax is invariant to it), so
    its true gradient is 0 and AdamW turns the ~1e-10 rounding left in it into lr-sized steps of either sign."""
    if k.endswith(("qkv.bias", "in_proj_bias")):  # [query; key; value] biases
        third = v.shape[0] // 3
        return torch.cat([v[:third], v[2 * third:]])
    return v


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


# ---- the text trainers under torchrun: control classifiers, the LMs, FUDGE's and PPLM's attribute models ----
CLI = Path(__file__).parent / "ddp_cli_run.py"


def launch_cli(procs: int, *args: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    head = [sys.executable] if procs == 1 else [str(TORCHRUN), "--standalone", f"--nproc_per_node={procs}"]
    cmd = [*head, str(CLI), "-" if kill_at is None else str(kill_at), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def worst_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    keys = [k for k in wa if k.startswith(("model.", "ema."))]
    assert keys and all(k in wb for k in keys)
    return max(float((effective(k, wa[k]).float() - effective(k, wb[k]).float()).abs().max()) for k in keys)


def same_log(a: Path, b: Path) -> None:
    la, lb = ([json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (a, b))
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(la, lb))


def tiny_lm(out: Path, procs: int, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """train-lm on 300 E2E sentences with a one-layer, dropout-free GPT-2 (dropout masks are per process)."""
    return launch_cli(procs, "train-lm", f"train.out_dir={out}", "data.limit=300", "model.layers=1",
                      "model.hidden=32", "model.heads=2", "model.dropout=0", "train.steps=8", "train.batch_size=8",
                      "train.warmup=2", "train.checkpoint_every=4", "train.log_every=2", *extra, kill_at=kill_at)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_lm_and_baseline_trainers_under_two_processes_train_what_one_process_trains(tmp_path):
    one, two = tmp_path / "lm1", tmp_path / "lm2"
    for out, procs in ((one, 1), (two, 2)):
        r = tiny_lm(out, procs)
        assert r.returncode == 0, r.stderr[-2000:]
    assert worst_difference(one, two) <= 1e-5
    same_log(one, two)
    # killed under two processes at step 6 (checkpoint at 4), resumed under one: the unbroken run's weights
    killed = tmp_path / "lm-killed"
    assert tiny_lm(killed, 2, kill_at=6).returncode != 0  # torchrun reports a worker's 130 as 1
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["step"] == 4
    assert tiny_lm(killed, 1).returncode == 0
    assert worst_difference(one, killed) <= 1e-5
    # FUDGE's future discriminator (its trunk a copy of that dropout-free LM) and PPLM's value discriminator;
    # PPLM's epochs end in a batch of 5 rows, which two processes split 3 + 2
    runs = {"fudge": ["fudge.steps=6", "fudge.batch_size=8", "fudge.limit=40", "fudge.eval_size=20",
                      "fudge.warmup=2", "fudge.log_every=2", "fudge.checkpoint_every=3", "fudge.spans_per_sentence=8"],
            "pplm": ["pplm.epochs=2", "pplm.batch_size=12", "pplm.limit=41", "pplm.eval_size=20", "pplm.min_count=2",
                     "pplm.log_every=1"]}
    for method, keys in runs.items():
        outs = [tmp_path / f"{method}{p}" for p in (1, 2)]
        for out, procs in zip(outs, (1, 2)):
            r = launch_cli(procs, "train-baseline", f"method={method}", f"lm={one}", f"out_dir={out}", *keys)
            assert r.returncode == 0, (method, r.stderr[-2000:])
        assert worst_difference(*outs) <= 1e-5, method
        same_log(*outs)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_control_classifier_under_two_processes_trains_what_one_process_trains(tmp_path):
    args = ["train-classifier", "task=pos", "encoder.hidden=32", "encoder.layers=1", "encoder.heads=2",
            "encoder.dropout=0", "optim.steps=8", "optim.batch_size=8", "optim.limit=60", "optim.eval_size=20",
            "optim.warmup=2", "optim.log_every=2", "optim.checkpoint_every=4"]
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    r = launch_cli(1, *args, f"out_dir={one}", "optim.step_seeded_noise=true")
    assert r.returncode == 0, r.stderr[-2000:]
    r = launch_cli(2, *args, f"out_dir={two}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert worst_difference(one, two) <= 1e-5
    same_log(one, two)
    assert launch_cli(2, *args, f"out_dir={killed}", kill_at=6).returncode != 0
    assert launch_cli(2, *args, f"out_dir={killed}").returncode == 0
    assert worst_difference(two, killed) <= 1e-6
    # a run started on the global RNG's noise cannot be resumed under torchrun (its stream cannot be redrawn)
    plain = tmp_path / "plain"
    assert launch_cli(1, *args, f"out_dir={plain}", kill_at=6).returncode == 130
    r = launch_cli(2, *args, f"out_dir={plain}")
    assert r.returncode != 0 and "resumes in one process without optim.step_seeded_noise" in r.stderr  # torchrun: 1


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_contrastive_trainers_under_two_processes_train_what_one_process_trains(tmp_path):
    """CLIP and the noised CLIP: each rank embeds its slice, the embeddings are gathered with their gradients
    and every rank takes the InfoNCE of the whole batch, so two processes give one process's weights; a run
    killed under two processes resumes under one to the unbroken run's weights."""
    runs = {"clip": ["train-clip", "clip_preset=tiny"],
            "noised": ["train-image-classifier", "image_classifier_preset=tiny", "classifier.kind=clip",
                       "train.steps=6", "train.checkpoint_every=3", "train.test_size=16"]}
    for name, args in runs.items():
        one, two, killed = (tmp_path / f"{name}{k}" for k in ("1", "2", "k"))
        for out, procs in ((one, 1), (two, 2)):
            r = launch_cli(procs, *args, f"train.out_dir={out}")
            assert r.returncode == 0, (name, r.stderr[-2000:])
        assert worst_difference(one, two) <= 1e-5, name
        same_log(one, two)
        assert launch_cli(2, *args, f"train.out_dir={killed}", kill_at=4).returncode != 0
        assert launch_cli(1, *args, f"train.out_dir={killed}").returncode == 0
        assert worst_difference(one, killed) <= 1e-5, name
