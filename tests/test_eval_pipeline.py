"""The harness end to end on real data with tiny models: parser → targets → evaluate, and bad input."""
import json

import pytest

from diffusion_lm.cli.main import run
from diffusion_lm.eval.metrics import compose_score
from diffusion_lm.eval.parser import ParserConfig, load_parser, parse_words, train_parser, treebank_trees
from diffusion_lm.eval.targets import load_targets
from diffusion_lm.tasks.trees import labelled_spans

TINY_PARSER = ["parser.d_model=32", "parser.num_layers=1", "parser.num_heads=2", "parser.d_kv=16", "parser.d_ff=64",
               "parser.d_char_emb=16", "parser.d_label_hidden=32", "parser.d_tag_hidden=32", "parser.epochs=1",
               "parser.limit=120", "parser.threads=1"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A tiny parser, teacher and target set built by the project's own commands."""
    root = tmp_path_factory.mktemp("harness")
    assert run(["build-parser", *TINY_PARSER, f"parser.out_dir={root}/parser"]) == 0
    assert run(["train-lm", "model.layers=1", "model.hidden=32", "model.heads=2", "train.steps=20",
                "train.batch_size=16", "train.threads=1", "data.limit=200", f"train.out_dir={root}/teacher"]) == 0
    assert run(["build-targets", "n=6", f"parser={root}/parser", f"out_dir={root}/targets"]) == 0
    return root


def test_treebank_is_shipped_and_cleaned():
    trees = treebank_trees(limit=50)
    assert len(trees) == 50
    assert all("-NONE-" not in str(t) for t in trees)


def test_parser_round_trips_through_safetensors(harness):
    cfg = json.loads((harness / "parser" / "config.json").read_text())
    assert cfg["metrics"]["heldout_trees"] == 12 and 0 <= cfg["metrics"]["heldout_f1"] <= 100
    parser = load_parser(str(harness / "parser"))
    again = load_parser(str(harness / "parser"))
    words = [["The", "Eagle", "is", "a", "cheap", "pub", "."], ["It", "serves", "Italian", "food", "."]]
    a, b = parse_words(parser, words), parse_words(again, words)
    assert [str(t) for t in a] == [str(t) for t in b]
    assert [t.leaves() for t in a] == words


def test_targets_have_every_task_and_fit_their_reference(harness):
    targets = load_targets(harness / "targets")
    assert set(targets) == {"semantic", "pos", "tree", "spans", "length", "compose"}
    for task, recs in targets.items():
        assert len(recs) == 6
        for r in recs:
            n = len(r["reference"].split())
            assert 10 <= n <= 40
            if task == "pos":
                assert len(r["target"].split()) == n == len(r["target_universal"].split())
            if task == "length":
                assert r["target"] == n
            if task == "spans":
                i, j, _ = r["target"]
                assert 0 <= i <= j < n and j - i + 1 < n
            if task == "semantic":
                assert r["target"].split(" : ")[0] in r["mr"]
            if task == "compose":  # the reference satisfies both parts
                assert compose_score(r["reference"], r["target"]) == 100.0
    again = harness / "targets2"
    assert run(["build-targets", "n=6", f"parser={harness}/parser", f"out_dir={again}"]) == 0
    assert (again / "pos.jsonl").read_text() == (harness / "targets" / "pos.jsonl").read_text()  # seeded


def test_evaluate_scores_systems_and_honesty_rows(harness, tmp_path, capsys):
    targets = load_targets(harness / "targets")
    gens = tmp_path / "gens.jsonl"
    rows = [{"task": "length", "target": r["target"], "text": " ".join(["word"] * r["target"]), "system": "exact"}
            for r in targets["length"]]
    rows += [{"task": "pos", "target": r["target"], "text": r["reference"], "system": "copy"} for r in targets["pos"]]
    gens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["evaluate", f"generations=[{gens}]", f"targets={harness}/targets", f"teacher={harness}/teacher",
            f"parser={harness}/parser", f"out_dir={tmp_path}/report"]
    assert run(argv) == 0
    result = json.loads((tmp_path / "report" / "table2.json").read_text())["results"]
    assert result["exact"]["length"]["ctrl"]["mean"] == 100.0
    assert result["copy"]["pos"]["ctrl"]["mean"] == 100.0
    refs = result["references (own targets)"]
    for task in ("pos", "length", "spans", "tree"):
        assert refs[task]["ctrl"]["mean"] == 100.0  # targets come from these references by the same oracles
    assert result["references (shuffled)"]["length"]["ctrl"]["mean"] < 100.0
    assert result["references (own targets), universal tags"]["pos"]["ctrl"]["mean"] == 100.0
    md = (tmp_path / "report" / "table2.md").read_text()
    assert "| exact |" in md and "Diffusion-LM (paper)" in md and "±" in md
    # every group's diversity beside the references': "word word ..." repeats one unigram and one bigram
    exact = result["exact"]["length"]["diversity"]
    assert exact["distinct1"] < refs["length"]["diversity"]["distinct1"] / 10
    assert exact["self_bleu"] > 2 * refs["length"]["diversity"]["self_bleu"]  # under 100 by the brevity penalty only
    assert "self-BLEU" in md


@pytest.mark.parametrize("row,message", [
    ({"task": "pos", "target": "DT FOO", "text": "a b", "system": "s"}, "unknown POS tag 'FOO'"),
    ({"task": "tree", "target": "(S (NP a)", "text": "a b", "system": "s"}, "malformed tree"),
    ({"task": "spans", "target": [4, 2, "NP"], "text": "a b", "system": "s"}, "0 <= i <= j"),
    ({"task": "semantic", "target": "colour : red", "text": "a b", "system": "s"}, "unknown MR field"),
    ({"task": "length", "target": 12, "text": "   ", "system": "s"}, "empty generation"),
    ({"task": "length", "text": "a b"}, "missing 'target'"),
])
def test_evaluate_bad_generations_exit_2_with_one_line(harness, tmp_path, capsys, row, message):
    gens = tmp_path / "bad.jsonl"
    gens.write_text(json.dumps(row) + "\n")
    code = run(["evaluate", f"generations=[{gens}]", f"targets={harness}/targets", f"teacher={harness}/teacher",
                f"parser={harness}/parser", f"out_dir={tmp_path}/report"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "report").exists()  # nothing half-written


def test_evaluate_missing_files_and_unknown_parser(harness, tmp_path, capsys):
    assert run(["evaluate", f"generations=[{tmp_path}/none.jsonl]"]) == 2
    assert "generations file not found" in capsys.readouterr().err
    assert run(["evaluate", f"targets={tmp_path}/nowhere", f"teacher={harness}/teacher"]) == 2
    assert "targets folder not found" in capsys.readouterr().err
    assert run(["build-targets", "n=3", "parser=no_such_parser", f"out_dir={tmp_path}/t"]) == 2
    assert "no parser at 'no_such_parser'" in capsys.readouterr().err


def test_oracle_spans_match_evalb_free_indices(harness):
    parser = load_parser(str(harness / "parser"))
    tree = parse_words(parser, [["A", "pub", "."]])[0]
    spans = labelled_spans(tree, evalb=False)
    assert all(0 <= i <= j < 3 for i, j, _ in spans)
