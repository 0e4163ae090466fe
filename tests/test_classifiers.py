"""Control classifiers: the tree CRF against brute force, POS and semantic heads, training, CLI."""
import itertools
import json

import pytest
import torch

from classifiers.encoder import EncoderConfig, LatentSpace
from classifiers.io import load_classifier
from classifiers.pos import UNIVERSAL, PosClassifier
from classifiers.semantic import SemanticClassifier
from classifiers.tree import EMPTY, TreeClassifier, constituents, crossing
from diffusion_lm.cli.main import run
from diffusion_lm.errors import UserError
from diffusion_lm.tasks.trees import parse_bracketed
from diffusion_lm.text.tokenizer import WordTokenizer

SPACE = LatentSpace(emb_dim=4, max_len=5, vocab_size=10, fingerprint="x")  # 3 word positions
SMALL = EncoderConfig(hidden=8, layers=1, heads=2, mlp_ratio=2, dropout=0.0)


def test_constituents_collapse_unary_chains_and_skip_preterminals():
    n, spans = constituents(parse_bracketed("(TOP (S (VP (VB go) (NP (PRP it)))))"))
    assert n == 2 and spans == {(0, 1): "S+VP", (1, 1): "NP"}


def test_crossing_marks_exactly_the_crossing_spans():
    cross = crossing(4, 4, [(1, 2)])
    assert {(i, j) for i in range(4) for j in range(i, 4) if cross[i, j]} == {(0, 1), (2, 3)}


def _brute(pot, keep):
    """log Σ over labelled binary trees of 3 words that `keep` accepts, of exp(score)."""
    bracketings = [[(0, 0), (1, 1), (2, 2), (0, 1), (0, 2)], [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2)]]
    scores = []
    for spans in bracketings:
        for labels in itertools.product(range(pot.shape[-1]), repeat=len(spans)):
            tree = dict(zip(spans, labels))
            if keep(tree):
                scores.append(sum(pot[i, j, k] for (i, j), k in tree.items()))
    return torch.logsumexp(torch.stack(scores), 0)


def test_tree_and_span_log_probs_match_brute_force(monkeypatch):
    clf = TreeClassifier(SPACE, SMALL, [EMPTY, "NP", "S"])
    pot = torch.randn(3, 3, 3, dtype=torch.float64)
    monkeypatch.setattr(clf, "potentials", lambda x, t, n=None: pot[None, :n, :n])
    x, t = torch.zeros(1, 5, 4), torch.zeros(1, dtype=torch.long)
    log_z = _brute(pot, lambda tree: True)

    target = clf.tree_target("(TOP (S (NP (DT a) (NN b)) (VBZ c)))")
    gold = {(0, 0): 0, (1, 1): 0, (2, 2): 0, (0, 1): 1, (0, 2): 2}
    expect = _brute(pot, lambda tree: tree == gold) - log_z
    assert torch.allclose(clf.log_prob(x, t, target), expect[None], atol=1e-3)

    span = clf.span_target([1, 2, "NP"], 3)
    expect = _brute(pot, lambda tree: tree.get((1, 2)) == 1) - log_z
    assert torch.allclose(clf.log_prob(x, t, span), expect[None], atol=1e-3)


def test_tree_targets_fail_cleanly():
    clf = TreeClassifier(SPACE, SMALL, [EMPTY, "NP", "S"], lengths=[2, 3])
    with pytest.raises(UserError, match="unknown constituent label 'QP'"):
        clf.span_target([0, 1, "QP"], 3)
    with pytest.raises(UserError, match="outside a sentence of 3 words"):
        clf.span_target([1, 3, "NP"], 3)
    with pytest.raises(UserError, match="longest sentence"):
        clf.span_length([0, 7, "NP"], torch.Generator())
    with pytest.raises(UserError, match="does not fit"):
        clf.tree_target("(S (NP (DT a) (NN b)) (VP (VBZ c) (NN d)))")
    with pytest.raises(UserError):
        clf.tree_target("(S (NP a")
    assert clf.span_length([0, 1, "NP"], torch.Generator().manual_seed(0)) in (2, 3)


def test_span_targets_borrow_training_trees_even_with_labels_the_classifier_left_out():
    from classifiers.tasks import parse_request

    # SINV was too rare to get a label: the borrowed tree keeps its NP, and its SINV bracket is left free.
    clf = TreeClassifier(SPACE, SMALL, [EMPTY, "NP", "S"], lengths=[3],
                         exemplars=["(TOP (SINV (NP (DT a) (NN b)) (VBZ c)))"])
    pos = PosClassifier(SPACE, SMALL, ["DT", "NN", "VBZ"])
    req = parse_request("spans", [0, 1, "NP"], {"tree": clf, "pos": pos}, 3, torch.Generator().manual_seed(0))
    assert req.length == 3 and [kind for kind, _ in req.parts] == ["tree", "pos"]
    allowed = req.parts[0][1].allowed[0]
    assert allowed[0, 1].tolist() == [False, True, False]  # the target span: NP only
    assert allowed[0, 2].all()  # the SINV bracket: free
    assert req.parts[1][1].tolist()[1:4] == [0, 1, 2]
    with pytest.raises(UserError, match="unknown constituent label 'SINV'"):
        clf.tree_target("(TOP (SINV (NP (DT a) (NN b)) (VBZ c)))")  # a target the user gives stays strict


def test_pos_log_prob_sums_word_positions_and_universal_tags_sum_their_ptb_tags():
    clf = PosClassifier(LatentSpace(4, 6, 10, "x"), SMALL, ["DT", "NN", "NNS", "VBZ", "."])
    x, t = torch.randn(1, 6, 4), torch.tensor([3])
    lp = clf.head(clf.encoder(x, t)).log_softmax(-1)[0]
    row, n = clf.target("DT NN VBZ")
    assert n == 3 and row.tolist() == [-1, 0, 1, 3, -1, -1]
    assert torch.allclose(clf.log_prob(x, t, row[None]), lp[1, 0] + lp[2, 1] + lp[3, 3])
    row, _ = clf.target("DET NOUN")
    noun = torch.logsumexp(lp[2, [1, 2]], 0)  # NN and NNS are NOUN
    assert torch.allclose(clf.log_prob(x, t, row[None]), lp[1, 0] + noun)
    assert row[2] == len(clf.tags) + UNIVERSAL.index("NOUN")
    with pytest.raises(UserError, match="unknown POS tag 'XX'"):
        clf.target("DT XX")
    with pytest.raises(UserError, match="at most 4 words"):
        clf.target("DT NN VBZ DT NN")


def _semantic():
    tok = WordTokenizer.train(["The Eagle is a pub .", "the eagle serves Italian food near Zizzi ."])
    space = LatentSpace(emb_dim=4, max_len=6, vocab_size=len(tok), fingerprint="x")
    rows = SemanticClassifier.oracle([["The", "Eagle", "serves", "Italian", "food", "."]],
                                     ["name[The Eagle], food[Italian], near[Clowns], familyFriendly[yes]"])
    return SemanticClassifier.for_data(space, SMALL, rows, tokenizer=tok), tok


def test_semantic_targets_name_known_pairs_whose_words_the_model_has():
    clf, tok = _semantic()
    assert clf.pairs == ["food : Italian", "name : The Eagle"]  # Clowns: not in the vocabulary
    mask = clf.target("name : The Eagle")
    assert mask.shape == (2, len(tok))
    assert {clf.words[i] for i in mask[0].nonzero()[:, 0].tolist()} == {"The", "the"}  # case-insensitive
    for bad, msg in [("food : Klingon", "unknown value 'Klingon'"), ("colour : red", "unknown MR field"),
                     ("familyFriendly : yes", "cannot be controlled"), ("food", "malformed")]:
        with pytest.raises(UserError, match=msg):
            clf.target(bad)
    labels = clf.encode_labels([{"words": ["The", "Eagle", "."]}])[0].tolist()
    assert labels == [tok.start_id, tok.word_id("The"), tok.word_id("Eagle"), tok.word_id("."), tok.end_id, -1]


def test_semantic_log_prob_is_a_noisy_or_over_start_positions():
    clf, tok = _semantic()
    x, t = torch.randn(2, 6, 4, requires_grad=True), torch.tensor([1, 2])
    target = clf.stack_targets([clf.target("food : Italian"), clf.target("name : The Eagle")])
    lp = clf.log_prob(x, t, target)
    p = clf.head(clf.encoder(x, t)).softmax(-1).detach()
    italian = 1 - torch.prod(1 - p[0, :, tok.word_id("Italian")])
    the = p[1, :, tok.word_id("The")] + p[1, :, tok.word_id("the")]
    eagle = p[1, :, tok.word_id("Eagle")] + p[1, :, tok.word_id("eagle")]
    the_eagle = 1 - torch.prod(1 - the[:-1] * eagle[1:])
    assert torch.allclose(lp.detach(), torch.log(torch.stack([italian, the_eagle])), atol=1e-5)
    lp.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_classifiers(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    common = [f"checkpoint={tiny_model}", "optim.limit=48", "optim.eval_size=8", "optim.batch_size=8",
              "encoder.hidden=16", "encoder.layers=1", "encoder.heads=2", "optim.log_every=1", "optim.min_count=1"]
    for kind in ("pos", "tree", "semantic"):
        assert run(["train-classifier", f"task={kind}", f"out_dir={out / kind}", "optim.steps=3", *common]) == 0
    return out, common


def test_train_classifier_saves_loads_and_resumes(tiny_classifiers, tiny_model):
    out, common = tiny_classifiers
    for kind in ("pos", "tree", "semantic"):
        clf = load_classifier(out / kind, kind=kind)
        summary = json.loads((out / kind / "summary.json").read_text())
        assert summary["steps"] == 3 and list(summary["heldout"]) == ["t=0", "t=25", "t=50", "t=75", "t=95"]
        assert json.loads((out / kind / "config.json").read_text())["metrics"]["steps"] == 3
        assert clf.kind == kind
    # a second call with more steps continues from the checkpoint, not from scratch
    assert run(["train-classifier", "task=pos", f"out_dir={out / 'pos'}", "optim.steps=5", *common]) == 0
    log = [json.loads(r) for r in (out / "pos" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]


def test_generate_cli_with_classifiers(tiny_classifiers, tiny_model, tmp_path, capsys):
    out, _ = tiny_classifiers
    cls = [f"classifiers.{k}={out / k}" for k in ("pos", "tree", "semantic")]
    base = ["generate", f"checkpoint={tiny_model}", "sample.steps=4", "n=2", *cls]
    cases = {"pos": "target=DT NN VBZ", "tree": 'target="(TOP (S (NP (DT a) (NN b)) (VBZ c)))"',
             "spans": "target=[0, 1, NP]", "semantic": f"target={_a_pair(out)}",
             "compose": f'target={{pos: "DT NN VBZ", semantic: "{_a_pair(out)}"}}'}
    for task, target in cases.items():
        path = tmp_path / f"{task}.jsonl"
        assert run([*base, f"task={task}", target, f"output={path}", f"trajectory={tmp_path / task}"]) == 0, task
        rows = [json.loads(r) for r in path.read_text().splitlines()]
        assert len(rows) == 2 and all(r["task"] == task and r["system"] == "diffusion-lm" for r in rows)
        if task in ("pos", "tree", "compose"):  # the target fixes the length
            assert all(len(r["text"].split()) == 3 for r in rows), rows
        assert (tmp_path / f"{task}.png").is_file()
    # length targets borrow the tags of a training sentence of that length (the tagger's exemplars)
    path = tmp_path / "len.jsonl"
    assert run([*base, "task=length", "target=3", f"output={path}"]) == 0
    assert all(len(json.loads(r)["text"].split()) == 3 for r in path.read_text().splitlines())
    # best of 2 draws by the classifier: still one row per sample, still the target's length
    path = tmp_path / "best.jsonl"
    assert run([*base, "task=pos", "target=DT NN VBZ", "select=2", f"output={path}"]) == 0
    rows = [json.loads(r) for r in path.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["text"].split()) == 3 for r in rows)
    capsys.readouterr()
    for task, target, msg in [("pos", "target=DT XX", "unknown POS tag"),
                              ("infill", "select=2", "needs a classifier task"),
                              ("tree", 'target="(S (NP a"', "malformed"),
                              ("spans", "target=[0, 99, NP]", "outside a sentence"),
                              ("spans", "target=[0, 1, QQ]", "unknown constituent label"),
                              ("semantic", "target=food : Klingon", "unknown value"),
                              ("semantic", "target=colour : red", "unknown MR field"),
                              ("compose", "target=DT NN", "compose target"),
                              ("length", "target=0", "out of range"),
                              ("pos", "guidance.strength=abc", "guidance.strength")]:
        args = [*base, f"task={task}", target] + (["target=3"] if target.startswith(("guidance", "select")) else [])
        code = run(args + [f"output={tmp_path / 'bad.jsonl'}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and len(err.splitlines()) == 1, (task, err)
        assert not (tmp_path / "bad.jsonl").exists()


def _a_pair(out) -> str:  # a (field, value) the tiny semantic classifier knows
    return json.loads((out / "semantic" / "config.json").read_text())["pairs"][0]


def test_classifier_refuses_another_models_latents(tiny_classifiers, tmp_path, capsys):
    other = tmp_path / "other"
    assert run(["train", "preset=tiny", "optim.steps=2", "optim.seed=1", "run.final_samples=0",
                f"run.out_dir={other}"]) == 0
    out, _ = tiny_classifiers
    capsys.readouterr()
    code = run(["generate", f"checkpoint={other}", "task=pos", "target=DT NN", f"classifiers.pos={out / 'pos'}",
                "sample.steps=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "another Diffusion-LM" in err and len(err.splitlines()) == 1


def test_malformed_classifier_folder_fails_in_one_line(tiny_classifiers, tmp_path):
    import shutil

    out, _ = tiny_classifiers
    bad = tmp_path / "pos"
    shutil.copytree(out / "pos", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["colour"] = "red"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not describe a pos classifier"):
        load_classifier(bad)
    with pytest.raises(UserError, match="holds a pos classifier, not a tree one"):
        load_classifier(out / "pos", kind="tree")
    with pytest.raises(UserError, match="no classifier folder"):
        load_classifier(tmp_path / "nowhere")


def test_tree_log_prob_over_the_longest_sentence_equals_the_full_inside_pass():
    from classifiers.tree import FORBID, TreeTarget

    torch.manual_seed(0)
    space = type(SPACE)(SPACE.emb_dim, 12, SPACE.vocab_size, SPACE.fingerprint)
    clf = TreeClassifier(space, SMALL, [EMPTY, "NP", "S", "VP"]).eval()
    trees = ["(TOP (S (NP (DT a) (NN b)) (VBZ c)))", "(TOP (S (NP (DT a) (NN b)) (VP (VBZ c) (NP (DT d) (NN e)))))"]
    target = TreeTarget.stack([clf.tree_target(trees[0]), clf.tree_target(trees[1])])
    x, t = torch.randn(2, 12, space.emb_dim), torch.tensor([3, 700])
    pot = clf.potentials(x, t)  # all N = 10 word positions
    full = (clf._log_partition(pot.masked_fill(~target.allowed, FORBID), target.lengths)
            - clf._log_partition(pot, target.lengths))
    assert pot.shape[1] == 10 and int(target.lengths.max()) == 5
    assert torch.allclose(clf.log_prob(x, t, target), full, atol=1e-4)


def test_tree_span_scores_on_the_upper_triangle_equal_the_full_grid_and_the_rest_is_unread():
    import torch.nn.functional as F

    torch.manual_seed(0)
    space = type(SPACE)(SPACE.emb_dim, 12, SPACE.vocab_size, SPACE.fingerprint)
    clf = TreeClassifier(space, SMALL, [EMPTY, "NP", "S", "VP"]).eval()
    x, t = torch.randn(2, 12, space.emb_dim), torch.tensor([3, 700])
    pot = clf.potentials(x, t, 6)
    h = clf.encoder(x, t)[:, 1:7]
    grid = clf.out(F.gelu(clf.left(h)[:, :, None] + clf.right(h)[:, None, :]))  # every (i, j), as before
    upper = torch.ones(6, 6, dtype=torch.bool).triu()
    assert torch.allclose(pot[:, upper], grid[:, upper], atol=1e-6) and (pot[:, ~upper] == 0).all()
    lengths = torch.tensor([6, 4])  # the inside pass never reads j < i: the partition is the full grid's
    assert torch.allclose(clf._log_partition(pot, lengths), clf._log_partition(grid, lengths), atol=1e-4)


def test_pos_log_prob_on_a_trimmed_sequence_reads_the_tags_inside_it():
    torch.manual_seed(0)
    from diffusion_lm.tasks.tagsets import ptb_tags

    space = type(SPACE)(SPACE.emb_dim, 12, SPACE.vocab_size, SPACE.fingerprint)
    clf = PosClassifier(space, SMALL, sorted(ptb_tags())).eval()
    row, n = clf.target("DT NN VBZ")
    x, t = torch.randn(1, space.max_len, space.emb_dim), torch.tensor([10])
    assert clf.log_prob(x[:, :n + 2], t, row[None]).shape == (1,)
    with pytest.raises(ValueError, match="past the sampled length"):
        clf.log_prob(x[:, :n], t, row[None])


def test_a_classifiers_guidance_weight_is_read_from_its_folder_and_weighs_its_control(tiny_classifiers, tmp_path):
    import shutil

    from classifiers.tasks import controls_for, parse_request

    out, _ = tiny_classifiers
    assert load_classifier(out / "pos").guidance_weight == 1.0  # folders without one: weight 1, as before
    heavy = tmp_path / "pos"
    shutil.copytree(out / "pos", heavy)
    cfg = json.loads((heavy / "config.json").read_text())
    (heavy / "config.json").write_text(json.dumps({**cfg, "guidance_weight": 2.5}))
    clf = load_classifier(heavy)
    assert clf.guidance_weight == 2.5
    req = parse_request("pos", "DT NN", {"pos": clf}, clf.space.max_len - 2, torch.Generator().manual_seed(0))
    assert [c.weight for c in controls_for([req], {"pos": clf})] == [2.5]
    for bad in (0, -1, "2", True, 1e9):
        (heavy / "config.json").write_text(json.dumps({**cfg, "guidance_weight": bad}))
        with pytest.raises(UserError, match="guidance_weight"):
            load_classifier(heavy)


def test_the_inside_pass_equals_torch_structs_tree_crf_in_value_and_gradient():
    import warnings

    from torch_struct import TreeCRF

    torch.manual_seed(0)
    pot = torch.randn(4, 9, 9, 5, requires_grad=True)
    pot.data[0, 2, 6] = -1e4  # a forbidden span, as the constrained pass masks them
    lengths = torch.tensor([9, 5, 3, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = TreeCRF(pot, lengths=lengths).partition
    got = TreeClassifier._log_partition(pot, lengths)
    assert torch.allclose(got, want, atol=1e-4)
    g_want, = torch.autograd.grad(want.sum(), pot)
    g_got, = torch.autograd.grad(got.sum(), pot)
    assert torch.allclose(g_got, g_want, atol=1e-5)
    one = torch.zeros(1, 3, 3, 1)  # one label, all scores 0: log Z = log (number of binary trees) = log Catalan(n−1)
    assert torch.allclose(TreeClassifier._log_partition(one, torch.tensor([3])), torch.tensor([2.0]).log())


def test_semantic_satisfied_is_whether_the_value_is_stated_at_t0(monkeypatch):
    clf, tok = _semantic()
    target = clf.stack_targets([clf.target("food : Italian")] * 2)
    lp = torch.log(torch.tensor([0.6, 0.4]))
    monkeypatch.setattr(clf, "log_prob", lambda x, t, tg: lp if (t == 0).all() else None)
    assert clf.satisfied(torch.zeros(2, 6, 4), target).tolist() == [True, False]
