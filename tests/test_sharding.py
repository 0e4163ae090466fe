"""Sharded generation (diffusion_lm.sharding): N shards of a run, merged, are exactly one process's output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_lm.cli.main import run
from diffusion_lm.errors import UserError
from diffusion_lm.sharding import merge_parts, owned_batches, parse_shard, tag_rows

TORCHRUN = Path(sys.executable).with_name("torchrun")
POS = ["generate", "task=pos", "targets=shipped", "limit=8", "batch_size=3", "sample.steps=20"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_shards_are_whole_batches_dealt_in_turn():
    assert owned_batches(10, 3, None) == [0, 3, 6, 9]
    assert owned_batches(10, 3, (0, 2)) == [0, 6] and owned_batches(10, 3, (1, 2)) == [3, 9]
    with pytest.raises(UserError, match=r"shard 2/3 has no batch: 4 jobs in batches of 2 make 2; use batch_size <= 1"):
        owned_batches(4, 2, (2, 3))
    assert parse_shard(None) is None and parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"):
        with pytest.raises(UserError, match="shard"):
            parse_shard(bad)


def test_merge_restores_one_process_order_and_refuses_incomplete_runs():
    whole = [{"task": "pos", "target": f"t{j}", "text": f"w{j}", "system": "s"} for j in range(7)]
    starts = {0: owned_batches(7, 2, (0, 2)), 1: owned_batches(7, 2, (1, 2))}
    parts = []
    for i, mine in starts.items():
        jobs = [j for b in mine for j in range(b, min(b + 2, 7))]
        parts.append((f"s{i}", tag_rows([whole[j] for j in jobs], jobs, 7, (i, 2))))
    other = [("plain", [{"task": "tree", "target": "x", "text": "y"}])]
    merged = merge_parts(other + parts[::-1])
    assert [name for name, _ in merged] == ["plain", "s1"] and merged[1][1] == whole
    with pytest.raises(UserError, match=r"shard\(s\) 0 of 2 missing"):
        merge_parts(parts[1:])
    with pytest.raises(UserError, match="also in s0"):
        merge_parts([parts[0], ("again", parts[0][1])])
    broken = [dict(r) for r in parts[1][1]]
    broken[0]["job"] = 0  # a job the other shard holds
    with pytest.raises(UserError, match="not 0..6 once each"):
        merge_parts([parts[0], ("s1", broken)])
    with pytest.raises(UserError, match="some rows carry a shard"):
        merge_parts([("mixed", parts[0][1] + whole[:1])])


def test_two_shards_of_generate_and_baseline_merge_into_one_process_output(tmp_path, capsys):
    for name, args in (("generate", POS), ("baseline", ["baseline", "method=fudge", "task=pos", "targets=shipped",
                                                        "limit=8", "batch_size=3"])):
        one = tmp_path / f"{name}.jsonl"
        assert run([*args, f"output={one}"]) == 0
        parts = [tmp_path / f"{name}.{i}.jsonl" for i in range(2)]
        for i, part in enumerate(parts):
            assert run([*args, f"shard={i}/2", f"output={part}"]) == 0
        assert {r["shard"] for r in rows(parts[1])} == {"1/2"} and [r["job"] for r in rows(parts[1])] == [3, 4, 5]
        merged = merge_parts([(str(p), rows(p)) for p in parts])
        assert len(merged) == 1 and merged[0][1] == rows(one), name
    # a run whose shard is missing is refused by evaluate, in one line, before any scoring
    assert run(["evaluate", f"generations=[{tmp_path / 'generate.1.jsonl'}]", f"out_dir={tmp_path / 'eval'}"]) == 2
    assert "shard(s) 0 of 2 missing" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    assert run([*POS, "shard=3/4", f"output={tmp_path / 'empty.jsonl'}"]) == 2  # 8 jobs in 3 batches
    assert not (tmp_path / "empty.jsonl").exists()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_generate_under_torchrun_writes_one_process_output(tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    assert run([*POS, f"output={one}"]) == 0
    r = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "diffusion_lm", *POS,
                        f"output={two}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert two.read_text() == one.read_text()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_evaluate_image_under_torchrun_scores_one_process_images(tmp_path):
    """The ranks draw alternate batches of every setting (DDIM: a function of x_T, drawn for all rows first);
    rank 0 gathers them in order and writes the report one process writes (images/s aside); with select the
    ranks draw the candidates and rank 0 reranks them."""
    args = ["evaluate-image", "limit=2", "n=2", "steps=5", "w=[2]", "batch_size=2", "real=8", "select=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    assert run([*args, f"out_dir={tmp_path / 'one'}"]) == 0
    r = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "diffusion_lm", *args,
                        f"out_dir={tmp_path / 'two'}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    for row in a["rows"] + b["rows"]:
        row.pop("images_per_s", None)
    assert a["rows"] == b["rows"] and a["real"] == b["real"] and b["meta"]["processes"] == 2
    assert [r["select"] for r in b["rows"]] == [1, 1, 2, 2]
    assert (tmp_path / "two" / "grid_test_none_w2.png").read_bytes() == (tmp_path / "one" / "grid_test_none_w2.png").read_bytes()
