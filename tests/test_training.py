"""The one training loop (diffusion_lm.training): schedule, ranges, checkpoints, and exact resume for every trainer.

The Diffusion-LM's resume after a kill is tested in test_cli.py, FUDGE's in test_baselines.py; the
others are here. A kill is simulated by raising KeyboardInterrupt when the loop asks for step k's lr.
"""
import json
from math import cos, pi
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lm import training
from diffusion_lm.errors import UserError
from diffusion_lm.text.train import OptimConfig, RunConfig
from conftest import kill_at
from diffusion_lm.training import Extra, LoopConfig, fit, generator_state, loop_config, lr_at


# ---- the lr schedule ------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_schedule_matches_closed_forms(schedule):
    o = LoopConfig(steps=110, lr=2.0, warmup=10, schedule=schedule, min_lr_ratio=0.25)
    shape = {"cosine": lambda p: 0.5 * (1 + cos(pi * p)), "linear": lambda p: 1 - p, "constant": lambda p: 1.0}[schedule]
    for step in range(10):  # linear warm-up to lr
        assert lr_at(step, o) == pytest.approx(2.0 * (step + 1) / 10)
    for step in (10, 35, 60, 109, 110, 500):  # progress over the steps after warm-up, floored at min_lr_ratio
        p = min(1.0, (step - 10) / 100)
        expect = 2.0 if schedule == "constant" else 2.0 * (0.25 + 0.75 * shape(p))
        assert lr_at(step, o) == pytest.approx(expect)


def test_lr_schedule_follows_the_time_cap_when_it_is_further_spent():
    assert not OptimConfig().anneal_by_time  # opt-in (README, "A slow day")
    o = loop_config({"optim": OptimConfig(steps=1000, warmup=0, lr=1.0, schedule="cosine", min_lr_ratio=0.0,
                                          max_minutes=10, anneal_by_time=True)})
    cosine = lambda progress: 0.5 * (1 + cos(pi * progress))  # noqa: E731
    assert lr_at(100, o) == pytest.approx(cosine(0.1))  # no clock given: steps only
    assert lr_at(100, o, minutes=5) == pytest.approx(cosine(0.5))  # slow machine: half the time, 10% of steps
    assert lr_at(600, o, minutes=1) == pytest.approx(cosine(0.6))  # fast machine: steps lead
    assert lr_at(100, o, minutes=12) == pytest.approx(0.0)  # past the cap: fully annealed
    o.anneal_by_time = False
    assert lr_at(100, o, minutes=5) == pytest.approx(cosine(0.1))
    o.anneal_by_time, o.max_minutes = True, None
    assert lr_at(100, o, minutes=5) == pytest.approx(cosine(0.1))


def test_every_trainer_config_reads_into_the_loop():
    from classifiers.train import ClassifierTrainConfig
    from diffusion_lm.baselines.fudge import FudgeTrainConfig
    from diffusion_lm.lm import ARTrainConfig

    for section, cfg in (("optim", ClassifierTrainConfig(steps=200, warmup=100, lr=1.0)),
                         ("fudge", FudgeTrainConfig(steps=200, warmup=100, lr=1.0)),
                         ("train", ARTrainConfig(steps=200, warmup=100, lr=1.0))):
        o = loop_config({section: cfg})
        assert lr_at(99, o) == pytest.approx(1.0)
        assert lr_at(150, o) == pytest.approx(0.5)  # halfway down the cosine, min_lr_ratio 0
        assert o.key("lr") == f"{section}.lr"
    o = loop_config({"optim": OptimConfig(), "run": RunConfig()})
    assert (o.ema_decay, o.log_every, o.key("log_every")) == (0.999, 25, "run.log_every")


# ---- ranges, checked in one place -------------------------------------------------------------
@pytest.mark.parametrize("field,value,key,msg", [
    ("batch_size", 0, "optim.batch_size", "an integer >= 1"),
    ("lr", 0.0, "optim.lr", "a finite number > 0"),
    ("lr", float("nan"), "optim.lr", "a finite number > 0"),
    ("lr", float("inf"), "optim.lr", "a finite number > 0"),
    ("grad_clip", -1.0, "optim.grad_clip", ">= 0 or null"),
    ("ema_decay", 1.0, "optim.ema_decay", "in [0, 1)"),
    ("ema_decay", -0.1, "optim.ema_decay", "in [0, 1)"),
    ("steps", -1, "optim.steps", "an integer >= 0"),
    ("warmup", -1, "optim.warmup", "an integer >= 0"),
    ("min_lr_ratio", 1.5, "optim.min_lr_ratio", "in [0, 1]"),
    ("max_minutes", 0.0, "optim.max_minutes", "> 0 or null"),
    ("schedule", "step", "optim.schedule", "choose cosine, linear or constant"),
])
def test_bad_ranges_are_one_line_errors_naming_the_key(field, value, key, msg):
    with pytest.raises(UserError) as e:
        loop_config({"optim": OptimConfig(**{field: value}), "run": RunConfig()})
    assert key in str(e.value) and msg in str(e.value) and "\n" not in str(e.value)
    for field, key in (("log_every", "run.log_every"), ("checkpoint_every", "run.checkpoint_every")):
        with pytest.raises(UserError, match=f"{key} must be an integer >= 1"):
            loop_config({"optim": OptimConfig(), "run": RunConfig(**{field: 0})})
    assert loop_config({"optim": OptimConfig(grad_clip=None, ema_decay=0.0)}).grad_clip is None


def test_cli_refuses_bad_ranges_before_writing(tmp_path, capsys):
    from diffusion_lm.cli.main import run

    out = tmp_path / "out"
    for argv, key in ((["train", "preset=tiny", "optim.lr=-1", f"run.out_dir={out}"], "optim.lr"),
                      (["train", "preset=tiny", "run.log_every=0", f"run.out_dir={out}"], "run.log_every"),
                      (["train-lm", "train.batch_size=0", f"train.out_dir={out}"], "train.batch_size"),
                      (["build-parser", "parser.epochs=-1", f"parser.out_dir={out}"], "parser.epochs")):
        assert run(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and key in err and len(err.splitlines()) == 1, err
        assert not out.exists()


# ---- the loop on a toy model -------------------------------------------------------------------
class Toy(torch.nn.Module):
    """Dropout (the RNG), a tied weight (stored once in safetensors) and an integer buffer (EMA copies it)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.drop = torch.nn.Dropout(0.3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))


def toy_fit(out, steps=12, cfg=None, sleep=0.0, **kw):
    import time

    torch.manual_seed(0)
    model = Toy()
    gen = torch.Generator().manual_seed(1)
    seen = {"n": 0, "t": torch.zeros(3)}

    def loss_at(step):
        if sleep:
            time.sleep(sleep)
        x = torch.randn(8, 4, generator=gen)
        model.calls += 1
        seen["n"] += 1
        seen["t"] += x[:3, 0]
        return model.b(model.drop(model.a(x))).pow(2).mean(), {"x0": x[0, 0]}

    loop = cfg or LoopConfig(steps=steps, lr=1e-2, warmup=3, schedule="cosine", grad_clip=0.5, ema_decay=0.9,
                             log_every=2, checkpoint_every=5)
    extra = {"batches": generator_state(gen),
             "counter": Extra(lambda: {"n": seen["n"], "t": seen["t"].clone()}, lambda s: seen.update(s))}
    result = fit(model, loss_at, loop, out, name="toy", progress=False, extra=extra, **kw)
    return model, result, seen


def assert_same_run(a: Path, b: Path, model_file: str | None = "model.safetensors", ignore_extra=()):
    """Bit-identical final checkpoints (weights, optimizer, EMA, RNG, extra state), model files and logs."""
    sa, sb = (load_file(str(d / "checkpoint" / "state.safetensors")) for d in (a, b))
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ja, jb = (json.loads((d / "checkpoint" / "state.json").read_text()) for d in (a, b))
    assert ja["step"] == jb["step"] and ja["param_groups"] == jb["param_groups"]
    for name in ja["extra"]:
        if name not in ignore_extra:
            assert ja["extra"][name] == jb["extra"][name], name
    if model_file:
        ma, mb = (load_file(str(d / model_file)) for d in (a, b))
        assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    la, lb = ([{k: v for k, v in json.loads(r).items() if k != "elapsed_s"}
               for r in (d / "train_log.jsonl").read_text().splitlines()] for d in (a, b))
    assert la == lb


def test_toy_fit_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    model_a, result, seen_a = toy_fit(tmp_path / "a")
    assert result.step == 12 and result.stopped == "steps" and set(result.last) == {"loss", "x0"}
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoint").iterdir()) == ["state.json", "state.safetensors"]
    assert (tmp_path / "a" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    revive = kill_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        toy_fit(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 5
    revive()
    model_b, result, seen_b = toy_fit(tmp_path / "b")
    assert result.step == 12
    assert_same_run(tmp_path / "a", tmp_path / "b", model_file=None)
    assert seen_a["n"] == seen_b["n"] == 12 and torch.equal(seen_a["t"], seen_b["t"])
    assert int(model_b.calls) == 12 and result.ema["calls"] == 12  # integer buffers are copied into the EMA
    assert model_b.b.weight is model_b.a.weight  # still tied after loading the checkpoint
    assert [json.loads(r)["step"] for r in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()] == \
        [2, 4, 6, 8, 10, 12]  # the killed run's rows past its checkpoint were dropped, then redone


def test_toy_fit_time_cap_checkpoints_and_resumes(tmp_path):
    toy_fit(tmp_path / "a")
    cfg = dict(steps=12, lr=1e-2, warmup=3, schedule="cosine", grad_clip=0.5, ema_decay=0.9, log_every=2,
               checkpoint_every=5)
    _, result, _ = toy_fit(tmp_path / "b", cfg=LoopConfig(**cfg, max_minutes=0.04 / 60), sleep=0.01)
    assert result.stopped == "time" and 0 < result.step < 12
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == result.step
    _, result, _ = toy_fit(tmp_path / "b", cfg=LoopConfig(**cfg))
    assert result.step == 12
    assert_same_run(tmp_path / "a", tmp_path / "b", model_file=None)


def test_toy_fit_hook_stops_and_checkpoint_old_is_used(tmp_path):
    _, result, _ = toy_fit(tmp_path / "a", on_step=lambda s: s.step == 7)
    assert result.stopped == "hook" and result.step == 7
    ck = tmp_path / "a" / "checkpoint"
    ck.rename(tmp_path / "a" / "checkpoint.old")  # killed between save_checkpoint's two renames
    _, result, _ = toy_fit(tmp_path / "a")
    assert result.step == 12 and ck.is_dir() and not (tmp_path / "a" / "checkpoint.old").exists()


def test_nan_loss_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    loss_at = (lambda step: model(torch.ones(1, 2)).pow(2).sum() * (float("inf") if step == 3 else 1.0))
    with pytest.raises(UserError) as e:
        fit(model, loss_at, LoopConfig(steps=6, checkpoint_every=2, keys={"lr": "optim.lr"}), tmp_path, name="toy",
            progress=False)
    assert str(e.value).startswith("toy loss became inf at step 3;") and "optim.lr" in str(e.value)
    assert "\n" not in str(e.value)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "checkpoint.tmp").exists()


# ---- resume after a kill equals an uninterrupted run, trainer by trainer ------------------------
# (Diffusion-LM: test_cli.py::test_resume_after_kill_matches_uninterrupted_run; FUDGE: test_baselines.py)
def _killed_and_resumed(monkeypatch, k, train):
    revive = kill_at(monkeypatch, k)
    with pytest.raises(KeyboardInterrupt):
        train()
    revive()
    return train()


def test_classifier_resumes_exactly(tiny_model, tmp_path, monkeypatch):
    from classifiers.encoder import EncoderConfig
    from classifiers.train import ClassifierTrainConfig, train_classifier

    enc = EncoderConfig(hidden=16, layers=1, heads=2, mlp_ratio=2, dropout=0.1)
    cfg = ClassifierTrainConfig(steps=8, batch_size=8, limit=48, eval_size=8, min_count=1, warmup=2, log_every=1,
                                checkpoint_every=3, threads=1)
    run = (lambda d: train_classifier("pos", str(tiny_model), str(tmp_path / d), enc, cfg, progress=False))
    run("a")
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").glob("oracle*"):  # the oracle's labels, reused as a rerun would
        (tmp_path / "b" / f.name).write_bytes(f.read_bytes())
    summary = _killed_and_resumed(monkeypatch, 5, lambda: run("b"))
    assert summary["steps"] == 8
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.fixture(scope="module")
def tiny_lm_cfg():
    from diffusion_lm.data.e2e import DataConfig
    from diffusion_lm.lm import ARLMConfig, ARTrainConfig

    return (ARLMConfig(layers=1, hidden=32, heads=2, dropout=0.1),
            lambda out, steps=8: ARTrainConfig(out_dir=str(out), steps=steps, batch_size=8, warmup=2, threads=1,
                                               log_every=1, checkpoint_every=3),
            DataConfig(limit=100))


def test_teacher_lm_resumes_exactly(tiny_lm_cfg, tmp_path, monkeypatch):
    from diffusion_lm.lm import train_lm

    model_cfg, train_cfg, data = tiny_lm_cfg
    a = train_lm(model_cfg, train_cfg(tmp_path / "a"), data, progress=False)
    b = _killed_and_resumed(monkeypatch, 5, lambda: train_lm(model_cfg, train_cfg(tmp_path / "b"), data,
                                                             progress=False))
    assert a["valid_perplexity"] == b["valid_perplexity"]
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_pplm_resumes_exactly(tiny_lm_cfg, tmp_path, monkeypatch):
    from diffusion_lm.baselines.pplm import PPLMTrainConfig, train_pplm
    from diffusion_lm.lm import train_lm

    model_cfg, train_cfg, data = tiny_lm_cfg
    train_lm(model_cfg, train_cfg(tmp_path / "lm", steps=2), data, progress=False)
    cfg = PPLMTrainConfig(epochs=3, batch_size=8, limit=24, eval_size=8, min_count=1, log_every=1,
                          checkpoint_every=2, threads=1)
    run = (lambda d: train_pplm(str(tmp_path / "lm"), str(tmp_path / d), cfg, progress=False))
    a = run("a")
    b = _killed_and_resumed(monkeypatch, 5, lambda: run("b"))
    assert a["final_loss"] == b["final_loss"]
    assert json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["step"] == 9  # 3 epochs of 3
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_parser_resumes_exactly_mid_epoch(tmp_path, monkeypatch):
    from diffusion_lm.eval.parser import ParserConfig, train_parser

    def run(d):  # max_minutes=None: with a budget the lr follows the clock, which no rerun repeats
        return train_parser(ParserConfig(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64, d_char_emb=16,
                                         d_label_hidden=32, d_tag_hidden=32, epochs=2, limit=60, batch_size=16,
                                         warmup=2, threads=1, max_minutes=None, log_every=1, checkpoint_every=3,
                                         out_dir=str(tmp_path / d)), progress=False)

    a = run("a")
    b = _killed_and_resumed(monkeypatch, 7, lambda: run("b"))  # checkpoint at step 6, inside epoch 2 of 4 steps
    assert [h["step"] for h in a["history"]] == [h["step"] for h in b["history"]] == [4, 8]
    assert [h["heldout_f1"] for h in a["history"]] == [h["heldout_f1"] for h in b["history"]]
    assert_same_run(tmp_path / "a", tmp_path / "b", ignore_extra=("record",))  # record holds wall-clock minutes


# ---- device, precision and torch.compile (every trainer's loop) ----------------------------------------
def test_precision_is_fp32_on_the_cpu_and_bf16_there_is_refused():
    from diffusion_lm.runtime import pick_device, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(UserError, match="optim.precision=bf16 needs a CUDA device"):
        resolve_precision("bf16", cpu, "optim.precision")
    with pytest.raises(UserError, match="unknown train.device 'tpu'"):
        pick_device("tpu", "train.device")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fudge.device=cuda but no CUDA device"):
            pick_device("cuda", "fudge.device")


@pytest.mark.parametrize("args, message", [
    (["train", "preset=tiny", "optim.precision=bf16"], "optim.precision=bf16 needs a CUDA device"),
    (["train", "preset=tiny", "optim.precision=fp8"], "unknown optim.precision 'fp8'"),
    (["train-lm", "train.device=tpu", "train.steps=1", "data.limit=10"], "unknown train.device 'tpu'"),
    (["train-baseline", "method=pplm", "pplm.precision=half", "pplm.epochs=1", "pplm.limit=10"],
     "unknown pplm.precision 'half'"),
    (["train-classifier", "optim.compile=maybe", "optim.steps=1", "optim.limit=10"],
     "optim.compile: Value 'maybe' is not a valid bool"),
])
def test_bad_device_precision_or_compile_fails_in_one_line_before_any_work(tmp_path, capsys, args, message):
    from diffusion_lm.cli.main import run

    out = {"train": "run.out_dir", "train-lm": "train.out_dir"}.get(args[0], "out_dir")
    assert run([*args, f"{out}={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_compiled_forward_trains_the_weights_the_eager_forward_trains(tmp_path):
    """optim.compile=true (torch.compile through module.compile(), inductor on the CPU) changes how the forward
    runs, not what it computes: three tiny steps land on the eager run's weights and keep the weight names."""
    from safetensors.torch import load_file

    from diffusion_lm.cli.main import run

    base = ["train", "preset=tiny", "optim.steps=3", "run.final_samples=0", "run.checkpoint_every=3"]
    assert run([*base, f"run.out_dir={tmp_path / 'eager'}"]) == 0
    assert run([*base, f"run.out_dir={tmp_path / 'compiled'}", "optim.compile=true"]) == 0
    a, b = (load_file(str(tmp_path / d / "checkpoint" / "state.safetensors")) for d in ("eager", "compiled"))
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a if k.startswith("model.")) < 1e-4


def test_init_from_starts_a_new_run_at_a_trained_models_weights(tiny_model, tmp_path, capsys):
    """optim.init_from: the new run's step 0 holds the given model's weights and tokenizer (a 1e-12 lr keeps
    them to float precision), its own fresh optimizer and step count; a model of another shape is one line, nothing written."""
    from diffusion_lm.cli.main import run

    out = tmp_path / "cont"
    assert run(["train", "preset=tiny", "optim.steps=2", "optim.lr=1e-12", "optim.warmup=0", "run.final_samples=0",
                "run.checkpoint_every=2", f"optim.init_from={tiny_model}", f"run.out_dir={out}"]) == 0
    a, b = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert (out / "tokenizer.json").read_text() == (tiny_model / "tokenizer.json").read_text()
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    bad = tmp_path / "bad"
    capsys.readouterr()
    assert run(["train", "preset=tiny", "model.hidden=48", "optim.steps=2", "run.final_samples=0",
                f"optim.init_from={tiny_model}", f"run.out_dir={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.init_from" in err and "hidden" in err and len(err.splitlines()) == 1, err
    assert not bad.exists()


def test_freeze_embeddings_keeps_the_words_where_the_classifiers_read_them(tiny_model, tmp_path, capsys):
    """optim.freeze_embeddings with init_from: the embeddings (and so the classifiers' fingerprint) stay bit for
    bit the starting model's while the denoiser moves; without it they move; a non-boolean is one line, exit 2."""
    from classifiers.encoder import embedding_fingerprint
    from diffusion_lm.text.io import from_pretrained
    from diffusion_lm.cli.main import run

    common = ["train", "preset=tiny", "optim.steps=3", "optim.lr=1e-2", "optim.warmup=0", "run.final_samples=0",
              "run.checkpoint_every=3", "optim.ema_decay=0", f"optim.init_from={tiny_model}"]
    assert run([*common, "optim.freeze_embeddings=true", f"run.out_dir={tmp_path / 'frozen'}"]) == 0
    assert run([*common, f"run.out_dir={tmp_path / 'free'}"]) == 0
    start = load_file(str(tiny_model / "model.safetensors"))
    frozen, free = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("frozen", "free"))
    emb = "embedding.weight"
    assert torch.equal(frozen[emb], start[emb]) and not torch.equal(free[emb], start[emb])
    moved = [k for k in start if k != emb and not torch.equal(frozen[k], start[k])]
    assert moved, "the denoiser did not train"
    fp = [embedding_fingerprint(from_pretrained(d)[0]) for d in (tiny_model, tmp_path / "frozen")]
    assert fp[0] == fp[1]
    capsys.readouterr()
    assert run([*common, "optim.freeze_embeddings=maybe", f"run.out_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.freeze_embeddings" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()
    # a resume keeps the setting it started with: dropping the flag would start training the embeddings
    longer = [a.replace("optim.steps=3", "optim.steps=5") for a in common]
    assert run([*longer, f"run.out_dir={tmp_path / 'frozen'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "optim.freeze_embeddings=true" in err and len(err.splitlines()) == 1, err
    assert run([*longer, "optim.freeze_embeddings=true", f"run.out_dir={tmp_path / 'frozen'}"]) == 0
    assert torch.equal(load_file(str(tmp_path / "frozen" / "model.safetensors"))[emb], start[emb])
