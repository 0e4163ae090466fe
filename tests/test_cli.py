import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lm.cli.main import run
from diffusion_lm.core import DiffusionConfig
from diffusion_lm.errors import UserError
from diffusion_lm.text import train as train_mod
from diffusion_lm.data.e2e import DataConfig
from diffusion_lm.text.generation import SampleConfig
from diffusion_lm.text.model import DiffusionLMConfig
from diffusion_lm.text.train import OptimConfig, RunConfig, train

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys, argv):
    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv,expect", [
    (["train", "preset=nope"], "preset/nope"),
    (["train", "foo=1"], "foo"),
    (["train", "model.hidden=abc"], "hidden"),
    (["train", "data.source=ftp"], "data.source"),
    (["train", "preset=tiny", "data.source=csv", "data.path=/no/such/dir"], "not a folder"),
    (["train", "preset=tiny", "model.heads=3"], "divisible"),
    (["train", "preset=tiny", "optim.t_sampling=lognormal"], "optim.t_sampling: unknown timestep sampling"),
    (["sample", "checkpoint=/no/such/ckpt"], "not found"),
    (["frobnicate"], "unknown command"),
    (["train", "--preset", "tiny"], "key=value"),
    (["sample", "n=x"], "n=x: n: Value 'x' of type 'str' could not be converted to Integer"),
    (["sample", "mbr=0"], "mbr must be at least 1"),
    (["sample", "checkpoint=shipped:nope"], "no shipped model named 'nope'"),
    (["generate", "target=5", "batch_size=0"], "batch_size must be at least 1"),
    (["build-targets", "n=0"], "n must be at least 1"),
    # null, text or a fraction given to an integer key fails in hydra, naming the key
    *[([cmd, "target=DT NN .", f"{key}={bad}"], f"{key}={bad}") for cmd in ("generate", "baseline")
      for key in ("seed", "n", "batch_size", "limit") for bad in ("null", "abc", "1.5") if not (key == "limit" and bad == "null")],
    *[(["generate", "task=infill", f"{key}={bad}"], f"{key}={bad}") for key in ("select", "middle") for bad in ("null", "x")],
    *[(["sample", f"{key}={bad}"], f"{key}={bad}") for key in ("seed", "n", "mbr", "batch_size") for bad in ("null", "2.5")],
    (["generate", "target=DT NN .", "guidance.strength=abc"], "guidance.strength"),
    (["generate", "target=DT NN .", "guidance.strength=nan"], "strength must be a finite number"),
    (["generate", "target=DT NN .", "guidance.strength=1e308"], "strength must be at most"),
    (["generate", "target=DT NN .", "device=tpu"], "unknown device 'tpu'"),
    (["evaluate", "honesty_rows=maybe"], "honesty_rows"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, expect):
    argv = [a.replace("RUN", str(tmp_path)) for a in argv]
    if argv[0] == "train":
        argv.append(f"run.out_dir={tmp_path / 'run'}")
    assert expect in one_line_error(capsys, argv)
    assert not (tmp_path / "run" / "model.safetensors").exists() or expect == "divisible"


def test_help_lists_commands(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "sample" in out
    assert run(["sample", "--help"]) == 0
    assert "sampler: ddpm" in capsys.readouterr().out


def test_tiny_train_then_sample_end_to_end(capsys, tmp_path):
    out = tmp_path / "tiny"
    assert run(["train", "preset=tiny", f"run.out_dir={out}"]) == 0
    for f in ("config.json", "diffusion.json", "model.safetensors", "tokenizer.json", "loss_curve.png", "samples.txt",
              "train_log.jsonl", "checkpoint/state.safetensors", "checkpoint/state.json"):
        assert (out / f).is_file(), f
    capsys.readouterr()
    jsonl = tmp_path / "s.jsonl"
    assert run(["sample", f"checkpoint={out}", "n=3", "sample.steps=10", f"output={jsonl}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    rows = [json.loads(r) for r in jsonl.read_text().splitlines()]
    assert [r["text"] for r in rows] == lines
    assert "steps must be in" in one_line_error(capsys, ["sample", f"checkpoint={out}", "sample.steps=500"])
    assert "sampler" in one_line_error(capsys, ["sample", f"checkpoint={out}", "sample.steps=5",
                                                "sample.sampler=euler"])
    # a different model in the same folder is refused, and nothing there is overwritten
    before = (out / "model.safetensors").read_bytes()
    assert "different model" in one_line_error(capsys, ["train", "preset=tiny", f"run.out_dir={out}",
                                                        "model.hidden=64"])
    assert "different diffusion" in one_line_error(capsys, ["train", "preset=tiny", f"run.out_dir={out}",
                                                            "diffusion.steps=50"])
    assert (out / "model.safetensors").read_bytes() == before


TINY_DIFFUSION = DiffusionConfig(schedule="sqrt", steps=50)


def _tiny(out, steps=20, t_sampling="uniform"):
    return (DataConfig(limit=256, max_len=24),
            DiffusionLMConfig(emb_dim=8, hidden=32, layers=1, heads=2, mlp_ratio=2, dropout=0.0),
            OptimConfig(steps=steps, batch_size=8, lr=3e-3, warmup=2, threads=1, t_sampling=t_sampling),
            RunConfig(out_dir=str(out), log_every=5, checkpoint_every=10, final_samples=0,
                      sample=SampleConfig(steps=5)))


@pytest.mark.parametrize("t_sampling", ["uniform", "warped"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, monkeypatch, t_sampling):
    train(*_tiny(tmp_path / "a", t_sampling=t_sampling), progress=False, diffusion=TINY_DIFFUSION)
    calls = {"n": 0}
    real = train_mod.diffusion_lm_loss

    def dies_at_step_14(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(train_mod, "diffusion_lm_loss", dies_at_step_14)
    with pytest.raises(KeyboardInterrupt):
        train(*_tiny(tmp_path / "b", t_sampling=t_sampling), progress=False, diffusion=TINY_DIFFUSION)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 10
    monkeypatch.setattr(train_mod, "diffusion_lm_loss", real)
    summary = train(*_tiny(tmp_path / "b", t_sampling=t_sampling), progress=False, diffusion=TINY_DIFFUSION)
    assert summary["steps"] == 20
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, monkeypatch):
    real = train_mod.diffusion_lm_loss
    calls = {"n": 0}

    def nan_after_12(*a, **kw):
        calls["n"] += 1
        terms = real(*a, **kw)
        if calls["n"] > 12:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_mod, "diffusion_lm_loss", nan_after_12)
    with pytest.raises(UserError, match="loss became nan at step 12"):
        train(*_tiny(tmp_path / "n"), progress=False, diffusion=TINY_DIFFUSION)
    assert json.loads((tmp_path / "n" / "checkpoint" / "state.json").read_text())["step"] == 10
    assert not (tmp_path / "n" / "checkpoint.tmp").exists()


def test_module_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "diffusion_lm", "train", "preset=nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")


@pytest.mark.parametrize("script,argv", [
    ("fluency_vs_time", ["n=8", "colour=red"]),           # unknown key
    ("fluency_vs_time", ["runs/cpu"]),                    # bare word
    ("fluency_vs_time", ["compare=runs/no-such-run"]),    # nothing scored there
    ("fluency_vs_time", ["run=runs/no-such-run"]),        # no trained run
    ("fluency_vs_time", ["compare=docs/fluency_cpu_h128.json", "x=epoch"]),  # unknown axis
    ("sampling_sweep", ["n=many"]),                       # not a number
    ("sampling_sweep", ["checkpoint=runs/no-such-run"]),  # UserError from the toolkit
    ("uncontrolled_rows", ["n=0"]),                       # below the minimum
    ("uncontrolled_rows", ["lm_guidance=-1"]),            # below the minimum
    ("uncontrolled_rows", ["lm_guidance_t=late"]),        # not LO-HI
    ("uncontrolled_rows", ["select=4"]),                  # more draws than one but nothing to pick by
    ("fluency_recipes", ["recipes=plain,guide:x"]),       # a bad recipe
    ("fluency_recipes", ["n=1"]),                         # below the minimum
    ("control_strength", ["task=colour"]),                # unknown task
    ("bench_control", ["systems=gpt4"]),                  # unknown system
    ("decoding_sweep", ["merge=runs/no-such-sweep.json"]),  # nothing to merge there
    ("decoding_sweep", ["merge=docs/fluency_cpu_h128.json"]),  # not a sweep's points
    ("bench_train", ["steps=abc"]),                       # not a number
    ("bench_train", ["profile=-1"]),                      # below the minimum
    ("bench_train", ["rounds=0"]),                        # below the minimum
    ("bench_train", ["preset=nope"]),                     # hydra cannot compose the config
    ("clip_binding", ["n=0"]),                            # below the minimum
    ("clip_binding", ["clips=runs/no-such-clip"]),        # UserError from the toolkit
    ("bench_second_core", ["tasks=colour"]),              # unknown task
    ("bench_second_core", ["n=1"]),                       # below the minimum
    ("rerank_compare", ["select=1"]),                     # nothing to rerank
    ("rerank_compare", ["select=4", "at=2,8"]),           # more candidates than drawn
    ("rerank_compare", ["w=strong"]),                     # not a number
    ("rerank_compare", ["splits=train,valid,nope"]),      # unknown split
    ("rerank_compare", ["rerankers=runs/no-such-clip"]),  # UserError from the toolkit, before any sampling
])
def test_scripts_reject_bad_arguments_with_exit_2(script, argv):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")


def test_fluency_compare_draws_curves_against_steps(tmp_path):
    png = tmp_path / "cmp.png"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "fluency_vs_time.py"),
                           "compare=docs/fluency_cpu_h128.json,docs/fluency_cpu_h192.json", f"out={png}", "x=step"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoding_sweep_merges_sweeps_and_plots_control_against_speed(tmp_path):
    out = tmp_path / "merged.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "decoding_sweep.py"),
                           "merge=docs/decoding_steps.json,docs/decoding_small_classifiers.json", "x=speed",
                           f"out={out}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(out.read_text())
    parts = [json.loads((ROOT / "docs" / f).read_text()) for f in ("decoding_steps.json", "decoding_small_classifiers.json")]
    assert merged == parts[0] + parts[1]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_args_overlay_defaults():
    from diffusion_lm.scripting import parse

    assert parse(["n=8", "out=a=b"], {"n": "64", "out": ""}) == {"n": "8", "out": "a=b"}



@pytest.mark.parametrize("env, message", [({"LM_FAST": "2"}, "LM_FAST must be 0 or 1"),
                                          ({"LM_ROWS": "colour"}, "LM_ROWS must be 1 or"),
                                          ({}, "procs must be a whole number")])
def test_table2_script_rejects_bad_settings_before_running_anything(tmp_path, env, message):
    import os

    out = tmp_path / "t2"
    procs = ["0"] if not env else []
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "table2.sh"), str(out), *procs], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
