"""Seeded fuzzing of the CLI's input: targets, keys and files, in-process through `cli.main.run`.

Every case must end in exit 0, or in exit 2 with one `error:` line as the last thing on stderr; never a
traceback or another exit code; and nothing half-written (no temporary file left, no output file after
an error, every output row whole). Hypothesis drives it with a fixed seed (`derandomize=True`), so a
run is repeatable and a failure is shrunk to a small case. Counts per test: `pytest -s` prints them.

Loads of the shipped models are cached for the module (the same objects a fresh load returns), so the
cases are about input, not load time; folders the fuzz corrupts are loaded afresh every time. Valid
cases sample with 2 steps and 1 guidance update, so the whole file runs in about half a minute.
"""
from __future__ import annotations

import contextlib
import io as stdio
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from diffusion_lm.assets import assets_dir, resolve_asset, resolve_checkpoint  # noqa: E402
from diffusion_lm.cli.main import run  # noqa: E402

# FUZZ_SCALE=10 FUZZ_RANDOM=1 pytest tests/test_fuzz.py: a longer exploration with a fresh seed
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(derandomize=not os.environ.get("FUZZ_RANDOM"), database=None, deadline=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
COUNTS: dict[str, Counter] = {}


# ---- one case ------------------------------------------------------------------------------------
def visible_lines(err: str) -> list[str]:
    """stderr as a terminal shows it: each line's text after its last carriage return (progress bars)."""
    return [ln.rsplit("\r", 1)[-1].strip() for ln in err.split("\n") if ln.rsplit("\r", 1)[-1].strip()]


def check(name: str, argv: list[str], workdir: Path, outputs: tuple[Path, ...] = ()) -> int:
    out, err = stdio.StringIO(), stdio.StringIO()
    counts = COUNTS.setdefault(name, Counter())
    counts["cases"] += 1
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
    except BaseException as e:  # run() re-raises what it takes for a bug
        counts["other"] += 1
        raise AssertionError(f"{argv!r} raised {type(e).__name__}: {e}") from e
    text = err.getvalue()
    lines = visible_lines(text)
    if code == 0:
        counts["exit 0"] += 1
        for f in outputs:
            if f.suffix == ".jsonl" and f.exists():
                [json.loads(ln) for ln in f.read_text(encoding="utf-8").splitlines()]  # every row whole
    elif code == 2:
        counts["exit 2"] += 1
        assert lines and lines[-1].startswith("error: "), (argv, text[-2000:])
        assert sum(ln.startswith("error: ") for ln in lines) == 1, (argv, text[-2000:])
        for f in outputs:
            assert not f.exists(), (argv, f"{f} written by a failed command")
    else:
        counts["other"] += 1
        raise AssertionError(f"{argv!r} exited {code}: {text[-2000:]}")
    assert "Traceback" not in text, (argv, text[-2000:])
    left = [p for p in workdir.rglob("*") if p.name.endswith(".tmp")]
    assert not left, (argv, f"temporary files left: {left}")
    return code


@pytest.fixture(scope="module", autouse=True)
def cached_shipped_loads():
    """Shipped models are loaded once for the module; anything else is loaded as usual."""
    from classifiers import io as clf_io

    from diffusion_lm.baselines import fudge
    from diffusion_lm.lm.teacher import ARLM
    from diffusion_lm.pipelines import baselines as bl_pipe
    from diffusion_lm.pipelines import text as text_pipe

    shipped = str(assets_dir())

    def cached(fn):
        memo = {}

        def load(path, *a, **k):
            if not str(path).startswith(shipped):
                return fn(path, *a, **k)
            key = (str(path), a, tuple(sorted(k.items())))
            if key not in memo:
                memo[key] = fn(path, *a, **k)
            return memo[key]
        return load

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(text_pipe, "from_pretrained", cached(text_pipe.from_pretrained))
        mp.setattr(text_pipe, "load_classifier", cached(clf_io.load_classifier))
        mp.setattr(bl_pipe, "load_discriminator", cached(fudge.load_discriminator))
        real_load = ARLM.load.__func__
        arlm = cached(lambda path, *a, **k: real_load(ARLM, path, *a, **k))
        mp.setattr(ARLM, "load", classmethod(lambda cls, path, *a, **k: arlm(path, *a, **k)))
        yield
    for name, c in sorted(COUNTS.items()):
        print(f"\nfuzz {name}: {c['cases']} cases, exit 0: {c['exit 0']}, exit 2: {c['exit 2']}, other: {c['other']}")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Copies of the shipped Diffusion-LM and POS classifier that each case copies again and damages."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(resolve_checkpoint("shipped"), root / "model")
    shutil.copytree(resolve_asset("shipped", "classifier", "pos"), root / "clf")
    return root


@contextlib.contextmanager
def workdir():
    d = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---- values --------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 20), 10 ** 20) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=6)

VALID = {
    "pos": ["DT NNP VBZ DT JJ NN .", "DET NOUN VERB .", ["DT", "NN", "."]],
    "tree": ["(TOP (S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (NP (DT a) (NN pub))) (. .)))", "(TOP (NP (NN pub)))"],
    "spans": ['[0, 1, "NP"]', [0, 0, "NP"], [2, 4, "VP"]],
    "semantic": ["food : Italian", "area : city centre", "name : The Eagle"],
    "length": [7, "12", 12.0],
    "compose": [{"pos": "NNP VBZ DT NN .", "semantic": "food : Italian"},
                '{"pos": "DT NN .", "semantic": "area : riverside"}'],
}
TASKS = tuple(VALID)
NOISE = st.text(alphabet="DTNVBZJ .,:()[]{}'\"\\$=0129-_ \t\né", max_size=30)


@st.composite
def targets(draw, task):
    kind = draw(st.sampled_from(["valid", "json", "edited", "text"]))
    if kind == "valid":
        return draw(st.sampled_from(VALID[task]))
    if kind == "json":
        return draw(json_values)
    if kind == "text":
        return draw(NOISE)
    base = draw(st.sampled_from([v for v in VALID[task] if isinstance(v, str)] or ["x"]))
    i = draw(st.integers(0, len(base)))
    return base[:i] + draw(NOISE) + base[i + draw(st.integers(0, 3)):]


def as_override(value) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


# ---- targets ---------------------------------------------------------------------------------------
FAST_GENERATE = ["sample.steps=2", "guidance.updates=1"]
FAST_BASELINE = ["fudge.max_words=4", "pplm.max_words=3", "pplm.iterations=1"]


@settings(FUZZ, max_examples=int(32 * SCALE))
@given(data=st.data())
def test_fuzz_targets(data):
    task = data.draw(st.sampled_from(TASKS), "task")
    target = data.draw(targets(task), "target")
    command = data.draw(st.sampled_from(["generate", "generate", "baseline"]), "command")
    inline = data.draw(st.booleans(), "inline")
    with workdir() as d:
        out = d / "out" / "rows.jsonl"
        argv = [command, f"task={task}", f"output={out}"]
        argv += FAST_GENERATE if command == "generate" else ["method=fudge", *FAST_BASELINE]
        if inline:
            argv.append(f"target={as_override(target)}")
        else:
            f = d / "targets.jsonl"
            rows = data.draw(st.lists(st.just(target) | targets(task), min_size=1, max_size=3), "rows")
            f.write_text("".join(json.dumps({"target": r}, allow_nan=True) + "\n" for r in rows))
            argv += [f"targets={f}", "limit=2"]
        code = check("targets", argv, d, (out,))
        if code == 0:
            assert out.is_file()


# ---- keys --------------------------------------------------------------------------------------------
COUNT = ["-1", "0", "1", "2", "1.5", "nan", "inf", "abc", "null", "[1]", "{a: 1}", "true", "''", "-0"]
SIZE = COUNT + ["1000000000", "1000000000000", "9223372036854775808", "1e400"]
NUMBER = ["nan", "inf", "-inf", "-1", "0", "0.5", "1", "1e308", "-1e-300", "abc", "null", "true", "[0.1]"]
WORD = ["bogus", "''", "5", "null", "[a]", "{}", "shipped", "shipped:nope", "/no/such/path", "${nope}"]

KEYS = {
    "generate": (["task=pos", "target=DT NN .", *FAST_GENERATE], {
        "n": COUNT, "select": COUNT, "batch_size": COUNT, "seed": SIZE, "limit": COUNT, "middle": COUNT,
        "sample.steps": SIZE, "sample.sampler": WORD, "sample.eta": NUMBER, "sample.variance": WORD,
        "sample.clamp": WORD, "guidance.strength": NUMBER, "guidance.updates": COUNT,
        "guidance.step_size": NUMBER, "guidance.skip_last": COUNT, "guidance.every": COUNT, "device": WORD,
        "length_shape": WORD,
        "task": WORD, "system": WORD, "classifiers.pos": WORD, "checkpoint": WORD, "targets": WORD,
        "target": WORD + NUMBER}),
    "sample": (["n=1", "sample.steps=2"], {
        "n": COUNT, "mbr": COUNT, "batch_size": COUNT, "seed": SIZE, "sample.steps": SIZE,
        "sample.length": SIZE, "sample.eta": NUMBER, "sample.sampler": WORD, "checkpoint": WORD, "device": WORD}),
    "baseline": (["task=semantic", "target=food : Italian", *FAST_BASELINE], {
        "method": WORD + ["pplm"], "n": COUNT, "seed": SIZE, "batch_size": COUNT, "task": WORD,
        "fudge.top_k": SIZE, "fudge.strength": NUMBER, "fudge.max_words": SIZE, "pplm.step_size": NUMBER,
        "pplm.kl_scale": NUMBER, "pplm.gm_scale": NUMBER, "pplm.gamma": NUMBER, "pplm.top_k": SIZE,
        "pplm.attribute": WORD, "lm": WORD, "attribute_model": WORD}),
    "train": (["preset=tiny", "optim.steps=1", "run.final_samples=0", "data.limit=64"], {
        "optim.batch_size": COUNT, "optim.lr": NUMBER, "optim.weight_decay": NUMBER, "optim.warmup": COUNT,
        "optim.schedule": WORD, "optim.min_lr_ratio": NUMBER, "optim.grad_clip": NUMBER,
        "optim.ema_decay": NUMBER, "optim.anchor_weight": NUMBER, "optim.t_sampling": WORD, "optim.seed": SIZE,
        "optim.max_minutes": NUMBER, "run.log_every": COUNT, "run.checkpoint_every": COUNT,
        "run.final_samples": COUNT, "run.snapshot_every": COUNT, "run.sample.steps": SIZE,
        "model.emb_dim": SIZE, "model.hidden": SIZE, "model.layers": SIZE, "model.heads": SIZE,
        "model.mlp_ratio": SIZE, "model.dropout": NUMBER, "model.self_condition": WORD,
        "data.max_len": SIZE, "data.min_freq": COUNT, "data.limit": COUNT, "data.source": WORD,
        "diffusion.schedule": WORD, "diffusion.steps": SIZE}),
    "evaluate": (["honesty_rows=false"], {
        "generations": WORD + NUMBER, "targets": WORD, "teacher": WORD, "parser": WORD,
        "throughput": WORD, "honesty_rows": WORD}),
}


@settings(FUZZ, max_examples=int(50 * SCALE))
@given(data=st.data())
def test_fuzz_keys(data):
    command = data.draw(st.sampled_from(sorted(KEYS)), "command")
    base, keys = KEYS[command]
    chosen = data.draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=2, unique=True), "keys")
    values = {k: data.draw(st.sampled_from(keys[k]), k) for k in chosen}
    with workdir() as d:
        gen = d / "gen.jsonl"
        gen.write_text(json.dumps({"task": "length", "target": 3, "text": "The Eagle is .", "system": "s"}) + "\n")
        argv = [command, *[o for o in base if o.split("=", 1)[0] not in values]]
        argv += [f"{k}={v}" for k, v in values.items()]
        outputs: tuple[Path, ...] = ()
        if command in ("generate", "sample", "baseline"):
            outputs = (d / "o" / "rows.jsonl",)
            argv.append(f"output={outputs[0]}")
        elif command == "train":
            argv.append(f"run.out_dir={d / 'run'}")
        elif command == "evaluate":
            argv.append(f"out_dir={d / 'ev'}")
            if "generations" not in values:
                argv.append(f"generations=[{gen}]")
        check("keys", argv, d, outputs)


# ---- files -------------------------------------------------------------------------------------------
MODEL_KEYS = ["vocab_size", "max_len", "emb_dim", "hidden", "layers", "heads", "mlp_ratio", "dropout",
              "self_condition", "extra"]


@st.composite
def damaged_json(draw, original: dict):
    how = draw(st.sampled_from(["set", "set", "drop", "whole", "bytes", "truncate"]))
    if how == "set":
        key = draw(st.sampled_from(sorted(original) + ["extra"]))
        return json.dumps({**original, key: draw(json_values | st.integers(-3, 5000))}, allow_nan=True).encode()
    if how == "drop":
        key = draw(st.sampled_from(sorted(original)))
        return json.dumps({k: v for k, v in original.items() if k != key}).encode()
    if how == "whole":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if how == "bytes":
        return draw(st.binary(max_size=40))
    text = json.dumps(original).encode()
    return text[:draw(st.integers(0, len(text)))]


def _damage(draw, folder: Path, files: list[str]) -> None:
    name = draw(st.sampled_from(files), "file")
    f = folder / name
    if name.endswith(".json"):
        original = json.loads(f.read_text())
        f.write_bytes(draw(damaged_json(original if isinstance(original, dict) else {}), name))
        return
    raw = f.read_bytes()
    how = draw(st.sampled_from(["truncate", "bytes", "flip", "nan"]), "how")
    if how == "truncate":
        f.write_bytes(raw[:draw(st.integers(0, len(raw) - 1))])
    elif how == "bytes":
        f.write_bytes(draw(st.binary(max_size=64)))
    elif how == "flip":
        at = draw(st.integers(0, min(len(raw) - 1, 4000)))  # the header and the first tensors
        f.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    else:
        import torch
        from safetensors.torch import load_file, save_file

        state = load_file(str(f))
        k = draw(st.sampled_from(sorted(k for k, v in state.items() if v.is_floating_point())), "tensor")
        state[k] = state[k].clone()
        state[k].view(-1)[0] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        save_file(state, str(f), metadata={"format": "pt"})
        del torch


@st.composite
def jsonl_bytes(draw):
    how = draw(st.sampled_from(["rows", "rows", "bytes", "text"]))
    if how == "bytes":
        return draw(st.binary(max_size=80))
    if how == "text":
        return draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")
    rows = draw(st.lists(json_values | st.fixed_dictionaries(
        {"task": st.sampled_from(TASKS + ("infill", "x")), "target": st.sampled_from(VALID["length"]) | json_values,
         "text": st.text(max_size=20) | json_values, "system": st.text(max_size=5) | json_values}), max_size=3))
    return "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode()


@settings(FUZZ, max_examples=int(40 * SCALE))
@given(data=st.data())
def test_fuzz_files(pristine, data):
    what = data.draw(st.sampled_from(["model", "model", "classifier", "targets", "generations"]), "what")
    with workdir() as d:
        out = d / "o" / "rows.jsonl"
        if what == "model":
            m = d / "model"
            shutil.copytree(pristine / "model", m)
            _damage(data.draw, m, ["config.json", "diffusion.json", "tokenizer.json", "model.safetensors"])
            argv = ["sample", "n=1", "sample.steps=2", f"checkpoint={m}", f"output={out}"]
        elif what == "classifier":
            c = d / "clf"
            shutil.copytree(pristine / "clf", c)
            _damage(data.draw, c, ["config.json", "model.safetensors"])
            argv = ["generate", "target=DT NN .", *FAST_GENERATE, f"classifiers.pos={c}", f"output={out}"]
        elif what == "targets":
            f = d / "t.jsonl"
            f.write_bytes(data.draw(jsonl_bytes(), "content"))
            task = data.draw(st.sampled_from(TASKS), "task")
            argv = ["generate", f"task={task}", f"targets={f}", "limit=2", *FAST_GENERATE, f"output={out}"]
        else:
            f = d / "g.jsonl"
            f.write_bytes(data.draw(jsonl_bytes(), "content"))
            out = d / "ev" / "table2.json"
            argv = ["evaluate", f"generations=[{f}]", "honesty_rows=false", f"out_dir={d / 'ev'}"]
        check("files", argv, d, (out,))


def test_fuzz_counts_are_recorded():
    """Runs last in this file: every case ended in exit 0 or exit 2."""
    assert COUNTS, "the fuzz tests above did not run"
    for name, c in COUNTS.items():
        assert c["other"] == 0, (name, c)
        assert c["cases"] == c["exit 0"] + c["exit 2"], (name, c)
