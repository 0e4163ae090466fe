"""Bad input of every kind ends in one line on stderr and exit code 2, with nothing half-written.

Each case is a regression test for a hole that once ended in a traceback, a hang, an out-of-memory
kill or a silently wrong result. They run in-process through `diffusion_lm.cli.main.run`; the ones
that load the shipped model fail right after loading it, before any sampling.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion_lm import io
from diffusion_lm.assets import resolve_asset, resolve_checkpoint
from diffusion_lm.cli.main import run
from diffusion_lm.errors import UserError
from diffusion_lm.training import LoopConfig, fit


def one_line_error(capsys, argv) -> str:
    code = run([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(ln.startswith("error: ") for ln in lines) == 1, err
    return lines[-1]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---- targets: non-strings, mixed tag sets, infinities ---------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    (["generate", "task=pos", "target=5"], "malformed POS target 5"),
    (["generate", "task=tree", "target=5"], "malformed tree target 5"),
    (["generate", "task=semantic", "target=5"], "malformed semantic target 5"),
    (["generate", "task=compose", "target=5"], "malformed compose target 5"),
    (["generate", "task=pos", "target=DT NOUN ."], "mixes Penn Treebank and universal tags"),
    (["generate", "task=length", "target=inf"], "length target inf is not an integer"),
    (["generate", "task=length", "target=2.5"], "length target 2.5 is not an integer"),  # was cut to 2
    (["generate", "task=spans", "target=[true,2,PP]"], "malformed span target"),  # True was index 1
    (["baseline", "task=pos", "target=DT NOUN ."], "mixes Penn Treebank and universal tags"),
    (["baseline", "task=length", "target=inf"], "length target inf is not an integer"),
])
def test_bad_inline_targets(capsys, argv, expect):
    assert expect in one_line_error(capsys, argv)


@pytest.mark.parametrize("task,row,expect", [
    ("pos", None, "malformed POS target None"),
    ("pos", [[1]], "is not text"),  # was: TypeError: unhashable type: 'list'
    ("pos", [1, 2], "tag 1 is not text"),
    ("compose", {"pos": [["DT"]], "semantic": "food : x"}, "is not text"),
    ("tree", 5, "malformed tree target 5"),
    ("length", [3], "is not an integer"),
    ("semantic", None, "malformed semantic target None"),
])
def test_bad_rows_in_a_targets_file(capsys, tmp_path, task, row, expect):
    f = jsonl(tmp_path / "t.jsonl", [{"target": row}])
    assert expect in one_line_error(capsys, ["generate", f"task={task}", f"targets={f}"])


# ---- the JSONL reader --------------------------------------------------------------------------------
@pytest.mark.parametrize("content,expect", [
    (b"\xff\xfe\xe9abc\n", "is not UTF-8 text"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "nested too deeply"),
    (b'{"target": ' + b"[" * 500 + b"]" * 500 + b"}\n", "nested more than"),
    (b"", "has no rows"),
    (b"\n  \n", "has no rows"),
    (b'{"target": 1' + b"0" * 5000 + b"}\n", "not usable JSON"),
])
@pytest.mark.parametrize("command", ["generate", "baseline", "evaluate"])
def test_unreadable_jsonl_files(capsys, tmp_path, content, expect, command):
    f = tmp_path / "x.jsonl"
    f.write_bytes(content)
    argv = {"generate": ["generate", "task=pos", f"targets={f}"],
            "baseline": ["baseline", "task=pos", f"targets={f}"],
            "evaluate": ["evaluate", f"generations=[{f}]", "honesty_rows=false", f"out_dir={tmp_path / 'ev'}"]}[command]
    assert expect in one_line_error(capsys, argv)
    assert not (tmp_path / "ev").exists()


def test_read_jsonl_directly(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"\xe9\n")
    with pytest.raises(UserError, match="not UTF-8"):
        io.read_jsonl(f)
    f.write_text("")
    assert io.read_jsonl(f) == []  # empty is allowed unless the caller says otherwise
    with pytest.raises(UserError, match="has no rows"):
        io.read_jsonl(f, "targets file", allow_empty=False)


@pytest.mark.parametrize("value,expect", [("5", "generations must be a JSONL file"),
                                          ("[1,2]", "generations must be a JSONL file"),
                                          ("{a: 1}", "generations"), ("[null]", "generations must be a JSONL file")])
def test_evaluate_generations_must_be_files(capsys, tmp_path, value, expect):
    assert expect in one_line_error(capsys, ["evaluate", f"generations={value}", f"out_dir={tmp_path / 'ev'}"])


@pytest.mark.parametrize("row,expect", [
    ({"task": "pos", "target": "DT NN .", "text": None, "system": "x"}, "text must be a string"),  # was scored as "None"
    ({"task": "pos", "target": "DT NN .", "text": 5, "system": "x"}, "text must be a string"),
    ({"task": "pos", "target": "DT NN .", "text": "a b .", "system": None}, "system must be a string"),
    ({"task": "pos", "target": [1, 2], "text": "a b", "system": "x"}, "not text"),
    ({"task": "spans", "target": {"a": 1}, "text": "a b", "system": "x"}, "malformed span target"),
    ({"task": "length", "target": True, "text": "a b", "system": "x"}, "is not an integer"),
])
def test_evaluate_rejects_bad_generation_rows(capsys, tmp_path, row, expect):
    f = jsonl(tmp_path / "g.jsonl", [row])
    msg = one_line_error(capsys, ["evaluate", f"generations=[{f}]", "honesty_rows=false", f"out_dir={tmp_path / 'ev'}"])
    assert expect in msg and "row 1" in msg
    assert not (tmp_path / "ev").exists()


# ---- keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    (["train", "preset=tiny", "optim.batch_size=0"], "optim.batch_size must be an integer >= 1"),
    (["train", "preset=tiny", "run.log_every=0"], "run.log_every must be an integer >= 1"),
    (["train", "preset=tiny", "optim.lr=nan"], "optim.lr must be a finite number"),
    (["train", "preset=tiny", "optim.ema_decay=nan"], "optim.ema_decay must be in [0, 1)"),
    (["train", "preset=tiny", "optim.grad_clip=-1"], "optim.grad_clip must be a number >= 0"),
    (["train", "preset=tiny", "optim.anchor_weight=nan"], "optim.anchor_weight must be a finite number"),
    (["train", "preset=tiny", "diffusion.schedule=bogus"], "unknown noise schedule 'bogus'"),
    (["train", "preset=tiny", "diffusion.steps=2000000000"], "at most 1,000,000 diffusion steps"),  # was an OOM kill
    (["train", "preset=tiny", "data.max_len=1000000000"], "data.max_len must be an integer in 3..4096"),
    (["train", "preset=tiny", "model.hidden=1000000000"], "model.hidden must be at most"),
    (["train", "preset=tiny", "model.layers=100000000"], "model.layers must be at most"),
    (["train", "preset=tiny", "run.final_samples=-1"], "run.final_samples must be an integer >= 0"),
    (["train", "preset=tiny", "run.sample.steps=100000"], "run.sample: sampling steps must be in"),  # was after training
    (["train", "preset=tiny", "run.sample.sampler=nope"], "unknown sampler 'nope'"),
    (["train-lm", "model.hidden=100000000", "train.out_dir=RUN/lm"], "model.hidden must be an integer in"),
    (["baseline", "target=food : Italian", "fudge.strength=nan"], "fudge.strength must be a finite number"),
    (["baseline", "target=food : Italian", "fudge.max_words=0"], "fudge.max_words must be an integer >= 1"),
    (["baseline", "target=food : Italian", "fudge.max_words=1000"], "fudge.max_words must be at most 62"),
    (["baseline", "method=pplm", "target=food : Italian", "pplm.gm_scale=nan"], "pplm.gm_scale must be a finite number"),
    (["baseline", "method=pplm", "target=food : Italian", "pplm.gm_scale=2"], "pplm.gm_scale must be a finite number"),
    (["baseline", "method=pplm", "target=food : Italian", "pplm.step_size=nan"], "pplm.step_size"),
    (["baseline", "method=pplm", "target=food : Italian", "pplm.kl_scale=inf"], "pplm.kl_scale"),
    (["baseline", "target=food : Italian", "fudge=5"], "fudge must be a section of keys"),
    (["train", "preset=tiny", "optim._target_=os.system"], "must name one of diffusion_lm's config classes"),
    (["generate", "target=DT NN .", "guidance=null"], "bad overrides"),  # was a ValueError out of hydra
    # sizes that cannot fit, or seeds torch cannot take: refused up front, not an OOM kill or an overflow
    (["generate", "target=DT NN .", "n=1000000000"], "at most 1,000,000 a command"),
    (["sample", "n=1000000", "mbr=1000"], "at most 1,000,000 a command"),
    (["generate", "target=DT NN .", "seed=100000000000000000000"], "seed must be at most"),
    (["sample", "seed=100000000000000000000"], "seed must be at most"),
    (["baseline", "target=food : Italian", "seed=100000000000000000000"], "seed must be at most"),
    (["train", "preset=tiny", "optim.seed=100000000000000000000"], "optim.seed must be an integer of magnitude"),
    (["train", "preset=tiny", "optim.batch_size=1000000000"], "optim.batch_size must be at most"),
    (["train-classifier", "optim.seed=100000000000000000000", "out_dir=RUN/clf"], "optim.seed"),
    (["sample", "sample.length=0"], "length must be in [1, 48]"),  # 0 was read as "the model's length"
])
def test_bad_keys(capsys, tmp_path, argv, expect):
    argv = [a.replace("RUN", str(tmp_path)) for a in argv]
    if argv[0] == "train":
        argv.append(f"run.out_dir={tmp_path / 'run'}")
    assert expect in one_line_error(capsys, argv)
    assert not (tmp_path / "run").exists() and not (tmp_path / "lm").exists()


def test_pplm_gm_scale_zero_is_plain_decoding_not_nan(capsys):
    # 0 · log q was NaN where q is masked (-inf), so sampling failed with a RuntimeError
    assert run(["baseline", "method=pplm", "target=food : Italian", "pplm.gm_scale=0", "pplm.max_words=4"]) == 0
    assert capsys.readouterr().out.strip()


# ---- corrupt model folders -----------------------------------------------------------------------
def _copy_model(tmp_path, name="diffusion-lm-cpu") -> Path:
    dst = tmp_path / name
    shutil.copytree(resolve_checkpoint(f"shipped:{name}") if name.startswith("diffusion") else
                    resolve_asset(f"shipped:{name}", "model"), dst)
    return dst


def _set_config(folder: Path, raw: bytes | None = None, file="config.json", **changes):
    if raw is None:
        c = json.loads((folder / file).read_text())
        c.update(changes)
        raw = json.dumps(c).encode()
    (folder / file).write_bytes(raw)


@pytest.mark.parametrize("raw,changes,file,expect", [
    (b"null", {}, "config.json", "must hold a JSON object"),
    (b'{"hidden": "\xe9"}', {}, "config.json", "is not UTF-8 text"),
    (None, {"hidden": "abc"}, "config.json", "hidden must be int"),
    (None, {"hidden": 128.0}, "config.json", "hidden must be int"),
    (None, {"self_condition": "no"}, "config.json", "self_condition must be bool"),  # "no" was truthy
    (None, {"max_len": 10 ** 9}, "config.json", "model.max_len must be at most"),
    (None, {"vocab_size": 10 ** 12}, "config.json", "tokenizer has 1171 words"),
    (None, {"hidden": 8192, "heads": 4}, "config.json", "weight"),  # checked on the meta device: no 3 GB built
    (None, {"steps": 10 ** 11}, "diffusion.json", "at most 1,000,000 diffusion steps"),
    (None, {"schedule": ["sqrt"]}, "diffusion.json", "unknown noise schedule"),
    (b"\xff\xfe", {}, "diffusion.json", "is not UTF-8 text"),
    (b"[" * 100000, {}, "diffusion.json", "nested too deeply"),
])
def test_corrupt_model_configs(capsys, tmp_path, raw, changes, file, expect):
    m = _copy_model(tmp_path)
    _set_config(m, raw, file, **changes)
    assert expect in one_line_error(capsys, ["sample", "n=1", f"checkpoint={m}"])


def _poison(folder: Path):
    state = load_file(str(folder / "model.safetensors"))
    k = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[k] = torch.full_like(state[k], float("nan"))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_nan_weights_are_refused_on_load(capsys, tmp_path):
    m = _copy_model(tmp_path)
    _poison(m)
    assert "holds NaN or infinite values" in one_line_error(capsys, ["sample", "n=1", f"checkpoint={m}"])


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c.pop("space"), "has no 'space'"),  # was KeyError
    (lambda c: c.pop("encoder"), "has no 'encoder'"),
    (lambda c: c.update(space="x"), "expected a JSON object for LatentSpace"),
    (lambda c: c["space"].pop("fingerprint"), "missing LatentSpace keys"),
    (lambda c: c["encoder"].update(hidden="abc"), "hidden must be int"),
    (lambda c: c["encoder"].update(hidden=10 ** 9), "encoder.hidden must be at most"),
    (lambda c: c["space"].update(max_len=10 ** 9), "space.max_len must be an integer"),
    (None, "holds NaN or infinite values"),
])
def test_corrupt_classifier_folders(capsys, tmp_path, mutate, expect):
    d = tmp_path / "clf"
    shutil.copytree(resolve_asset("shipped", "classifier", "pos"), d)
    if mutate is None:
        _poison(d)
    else:
        c = json.loads((d / "config.json").read_text())
        mutate(c)
        (d / "config.json").write_text(json.dumps(c))
    assert expect in one_line_error(capsys, ["generate", "target=DT NN .", f"classifiers.pos={d}"])


def test_nan_weights_in_a_base_lm(capsys, tmp_path):
    d = _copy_model(tmp_path, "base-lm")
    _poison(d)
    assert "holds NaN or infinite values" in one_line_error(capsys, ["baseline", "target=food : Italian", f"lm={d}"])


def test_huge_sizes_in_a_base_lm_config(capsys, tmp_path):
    d = _copy_model(tmp_path, "base-lm")
    _set_config(d, n_embd=10 ** 9)
    assert "n_embd must be an integer in" in one_line_error(capsys, ["baseline", "target=food : Italian", f"lm={d}"])


# ---- resuming from a damaged checkpoint ---------------------------------------------------------------
def _fit(out: Path, steps: int, loss=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    cfg = LoopConfig(steps=steps, lr=1e-2, log_every=1, checkpoint_every=1, ema_decay=0.9)
    return fit(model, loss or (lambda step: model(x).pow(2).mean()), cfg, out, progress=False)


@pytest.mark.parametrize("damage,expect", [
    ("meta:param_groups", "no 'param_groups'"),
    ("meta:step", "no 'step'"),
    ("meta:null", "must hold a JSON object"),
    ("meta:negative", "step must be an integer >= 0"),
    ("tensor:rng.torch", "no 'rng.torch'"),
    ("tensor:ema.weight", "no EMA weights"),
    ("tensor:model.weight", "weights do not match"),
])
def test_resume_from_a_damaged_checkpoint(tmp_path, damage, expect):
    out = tmp_path / "run"
    _fit(out, 2)
    ck = out / "checkpoint"
    kind, what = damage.split(":")
    if kind == "meta":
        meta = json.loads((ck / "state.json").read_text())
        if what == "null":
            meta = None
        elif what == "negative":
            meta["step"] = -3
        else:
            meta.pop(what)
        (ck / "state.json").write_text(json.dumps(meta))
    else:
        tensors = load_file(str(ck / "state.safetensors"))
        tensors.pop(what)
        save_file(tensors, str(ck / "state.safetensors"))
    with pytest.raises(UserError, match=expect):
        _fit(out, 4)


def test_a_kill_mid_checkpoint_leaves_no_temp_files_after_the_next_start(tmp_path):
    out = tmp_path / "run"
    _fit(out, 2)
    (out / "checkpoint.tmp").mkdir()
    (out / "checkpoint.tmp" / "state.json").write_text("{")
    (out / ".train_log.jsonl.abcd1234.tmp").write_text("half")
    (out / "notes.tmp").write_text("the user's")  # not one of ours: kept
    _fit(out, 3)
    assert not (out / "checkpoint.tmp").exists() and not list(out.glob(".*.tmp"))
    assert (out / "notes.tmp").exists()


def test_a_kill_mid_output_write_leaves_no_temp_file_after_the_next_start(capsys, tmp_path):
    stale = tmp_path / ".out.jsonl.abcd1234.tmp"
    stale.write_text("half")
    code = run(["generate", "target=DT NN .", f"output={tmp_path / 'out.jsonl'}", "batch_size=0"])
    assert code == 2 and not stale.exists()


def test_nan_loss_without_a_checkpoint_does_not_claim_one(tmp_path):
    with pytest.raises(UserError, match="no checkpoint was written yet") as e:
        _fit(tmp_path / "run", 3, loss=lambda step: torch.tensor(float("nan"), requires_grad=True))
    assert "kept" not in str(e.value)


def test_progress_bar_is_closed_before_the_error(capsys):
    from tqdm.auto import tqdm

    from diffusion_lm.core import DiffusionConfig, GaussianDiffusion, sample

    diffusion = GaussianDiffusion.from_config(DiffusionConfig("sqrt", 20))

    def fails(x, t):
        if int(t[0]) < 15:
            raise UserError("stop")
        return torch.zeros_like(x)

    before = len(tqdm._instances)
    with pytest.raises(UserError):
        sample(fails, diffusion, (1, 2, 2), progress=True)
    assert len(tqdm._instances) == before  # closed while the error propagated, not later at garbage collection


# ---- output paths, checked before any work -------------------------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    (["generate", "target=DT NN .", "output=TMP"], "is a folder; give a file name"),
    (["generate", "target=DT NN .", "output=FILE/x.jsonl"], "is a file, not a folder"),
    (["generate", "target=DT NN .", "trajectory=FILE/traj"], "is a file, not a folder"),
    (["sample", "output=TMP"], "is a folder; give a file name"),
    (["baseline", "target=food : Italian", "output=TMP"], "is a folder; give a file name"),
    (["evaluate", "out_dir=FILE"], "is a file, not a folder"),
    (["train", "preset=tiny", "run.out_dir=FILE"], "is a file, not a folder"),
    (["train-classifier", "out_dir=FILE/sub"], "is a file, not a folder"),
    (["train-baseline", "out_dir=FILE"], "is a file, not a folder"),
    (["train-lm", "train.out_dir=FILE"], "is a file, not a folder"),
    (["build-parser", "parser.out_dir=FILE"], "is a file, not a folder"),
    (["build-targets", "out_dir=FILE"], "is a file, not a folder"),
])
def test_output_paths_are_checked_first(capsys, tmp_path, monkeypatch, argv, expect):
    f = tmp_path / "afile"
    f.write_text("x")
    argv = [a.replace("TMP", str(tmp_path)).replace("FILE", str(f)) for a in argv]
    # any model load would come after the check: make it fail loudly if reached
    monkeypatch.setattr("diffusion_lm.pipelines.text.from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded a model")))
    assert expect in one_line_error(capsys, argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_read_only_folder_is_refused_before_work(capsys, tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    msg = one_line_error(capsys, ["generate", "target=DT NN .", f"output={tmp_path / 'o.jsonl'}"])
    assert "cannot write in" in msg and "Read-only file system" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_refused_before_work(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "cannot write in" in one_line_error(capsys, ["evaluate", f"out_dir={ro / 'ev'}"])
    finally:
        ro.chmod(0o700)


def test_disk_full_while_writing_is_one_line(capsys, tmp_path, monkeypatch):
    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("diffusion_lm.cli.generate.write_jsonl", full)
    msg = one_line_error(capsys, ["generate", "target=DT NN .", f"output={tmp_path / 'o.jsonl'}",
                                  "sample.steps=2", "guidance.updates=0"])
    assert "No space left on device" in msg


# ---- no unpickling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["file", "folder", "path"])
def test_parser_is_never_unpickled_from_a_path(capsys, tmp_path, monkeypatch, what):
    import torch as torch_mod

    monkeypatch.setattr(torch_mod, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.load")))
    p = tmp_path / "parser.pt"
    if what == "file":
        torch_mod.save({"config": {}, "state_dict": {}}, p)
    elif what == "folder":
        p.mkdir()
        (p / "benepar_model.bin").write_bytes(b"\x80\x04N.")
        (p / "config.json").write_text("{}")
    msg = one_line_error(capsys, ["evaluate", f"parser={p}", f"out_dir={tmp_path / 'ev'}"])
    assert ("not a parser folder" in msg) if what != "path" else ("not a benepar model name" in msg)
