"""FUDGE and PPLM: the reweighting, the zero-strength identities, the discriminator's heads, bad targets."""
import json
import math

import pytest
import torch

from diffusion_lm.baselines.decoding import fudge_reweight, next_log_probs, sample_plain, texts, top_k
from diffusion_lm.baselines.fudge import (BatchedTargets, FudgeConfig, FudgeTarget, FutureDiscriminator,
                                          fudge_generate)
from diffusion_lm.baselines.labels import states, value_key
from diffusion_lm.baselines.pplm import PPLM, MeanDiscriminator, PPLMConfig, bag_mask
from diffusion_lm.errors import UserError
from diffusion_lm.lm.teacher import ARLMConfig, _gpt2
from diffusion_lm.text.tokenizer import WordTokenizer

SENTENCES = ["The Eagle is a pub near Café Rouge .", "Italian food at The Mill , a cheap coffee shop .",
             "The Wrestlers serves Japanese food in the city centre ."]
TREE = "(TOP (S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (NP (DT a) (NN pub))) (. .)))"


@pytest.fixture
def tiny():
    tok = WordTokenizer.train(SENTENCES)
    lm = _gpt2(ARLMConfig(layers=1, hidden=32, heads=2, max_len=16, dropout=0.0), len(tok), tok).eval()
    return lm, tok


def tiny_disc(lm, tok):
    gpt2 = {k: v for k, v in lm.config.to_dict().items() if k in ("vocab_size", "n_positions", "n_embd", "n_layer",
                                                                 "n_head", "bos_token_id", "eos_token_id", "pad_token_id")}
    pairs = ["food : Italian", "name : The Eagle", "near : The Eagle"]
    return FutureDiscriminator(gpt2, ["DT", "NN", "NNP", "VBZ", "."], ["NP", "S", "VP"], pairs,
                               sorted({value_key(p.split(" : ")[1]) for p in pairs}), span_dim=8).eval()


def test_fudge_reweighting_matches_hand_computation():
    lm = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    cand, lm_top = top_k(lm, 2)
    assert cand.tolist() == [[0, 1]]
    attr = torch.log(torch.tensor([[0.2, 0.9]]))  # P(a | prefix, x) of the two candidates
    got = fudge_reweight(lm_top, attr, strength=2.0).exp()
    # 0.5 · 0.2² = 0.02 and 0.3 · 0.9² = 0.243, normalised
    assert torch.allclose(got, torch.tensor([[0.02 / 0.263, 0.243 / 0.263]]), atol=1e-6)
    # λ = 0 is the LM's own top-k distribution
    assert torch.allclose(fudge_reweight(lm_top, attr, 0.0).exp(), torch.tensor([[0.5 / 0.8, 0.3 / 0.8]]))


def test_banned_tokens_and_decoding(tiny):
    _, tok = tiny
    logp = next_log_probs(torch.zeros(1, len(tok)), tok, step=0)
    for i in (tok.pad_id, tok.start_id, tok.unk_id, tok.end_id):
        assert logp[0, i] == float("-inf")
    assert next_log_probs(torch.zeros(1, len(tok)), tok, step=1)[0, tok.end_id] > float("-inf")
    ids = torch.tensor([[tok.start_id] + tok.encode("The Eagle is")[1:-1] + [tok.end_id, tok.pad_id]])
    assert texts(ids, tok) == ["The Eagle is"]


def test_fudge_at_zero_strength_is_plain_sampling(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    target = disc.target("semantic", "food : Italian")
    cfg = FudgeConfig(top_k=5, strength=0.0, max_words=8)
    a = fudge_generate(lm, tok, disc, [target] * 3, cfg, torch.Generator().manual_seed(1))
    b = sample_plain(lm, tok, 3, 8, 5, torch.Generator().manual_seed(1))
    assert a == b and all(s.split() for s in a)


def test_discriminator_candidate_states_match_a_full_forward(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    ids = torch.tensor([tok.encode("The Eagle is a")[:-1]] * 2)
    cand = torch.tensor([[5, 6, 7], [8, 9, 10]])
    h = disc.candidate_states(ids, cand)
    assert h.shape == (2, 3, ids.shape[1] + 1, lm.config.n_embd)
    for b in range(2):
        for j in range(3):
            full = torch.cat([ids[b], cand[b, j:j + 1]])[None]
            ref = disc(full, torch.ones_like(full, dtype=torch.bool))[0]
            assert torch.allclose(h[b, j], ref, atol=1e-5)


def test_span_head_reads_only_the_prefix(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    ids = torch.tensor([tok.encode("The Eagle is a pub near Café Rouge .")])
    spans = torch.tensor([[[0, 1, 0], [3, 4, 0], [0, 8, 1]]])
    at = torch.arange(ids.shape[1])[None]
    full = disc.span_logits(disc(ids, torch.ones_like(ids, dtype=torch.bool)), at, spans)
    for p in range(ids.shape[1]):  # judged from the first p + 1 tokens alone: the same as within the whole sentence
        part = ids[:, :p + 1]
        alone = disc.span_logits(disc(part, torch.ones_like(part, dtype=torch.bool)), torch.tensor([[p]]), spans)
        assert torch.allclose(alone[0, 0], full[0, p], atol=1e-5)


def test_fudge_log_prob_sums_the_target_heads(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    states = torch.randn(2, 3, 4, lm.config.n_embd)
    h = states[:, :, -1]
    t = [disc.target("compose", {"pos": "DT NNP VBZ", "semantic": "food : Italian"}), disc.target("length", 4)]
    assert t[0].length == 3 and t[0].tags == [[0], [2], [3]] and t[1].length == 4
    got = disc.log_prob(states, 1, BatchedTargets.stack(t, len(disc.tags)))
    length = torch.log_softmax(disc.length_head(h), -1)
    tag = torch.log_softmax(disc.tag_head(h), -1)
    value = torch.nn.functional.logsigmoid(disc.value_head(h))
    v = disc.values.index("italian")
    assert torch.allclose(got[0], tag[0, :, 2] + length[0, :, 3] + value[0, :, v], atol=1e-5)
    assert torch.allclose(got[1], length[1, :, 4], atol=1e-5)  # a length target has only the length term
    # a universal tag allows all its PTB tags: log of their summed probability
    u = BatchedTargets.stack([disc.target("pos", "DET NOUN")], len(disc.tags))
    ref = torch.logsumexp(tag[0, :, [1, 2]], -1) + length[0, :, 2]
    assert torch.allclose(disc.log_prob(states[:1], 1, u)[0], ref, atol=1e-5)


def test_tree_and_span_targets_become_span_terms(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    t = disc.target("tree", TREE)
    assert t.length == 6 and len(t.tags) == 6
    assert (0, 1, disc.span_labels.index("NP")) in t.spans and (0, 5, disc.span_labels.index("S")) in t.spans
    s = disc.target("spans", [2, 4, "VP"])
    assert s.spans == [(2, 4, disc.span_labels.index("VP"))] and s.length is None


@pytest.mark.parametrize("task,target,message", [
    ("pos", "DT XX", "unknown POS tag"),
    ("semantic", "food : Martian", "unknown value"),
    ("semantic", "colour : red", "unknown MR field"),
    ("spans", [1, 3, "QP"], "unknown constituent label"),
    ("spans", [3, 1, "NP"], "need 0 <= i <= j"),
    ("length", 99, "out of range"),
    ("tree", "(S (NP The", "malformed tree"),
    ("compose", '{"pos": "DT"}', "compose target"),
])
def test_bad_fudge_targets_fail_in_one_line(tiny, task, target, message):
    lm, tok = tiny
    with pytest.raises(UserError, match=message):
        tiny_disc(lm, tok).target(task, target)


def test_pplm_with_zero_step_size_is_plain_sampling(tiny):
    lm, tok = tiny
    disc = MeanDiscriminator(lm.config.n_embd, ["food : Italian"], ["italian"])
    for attribute, d in (("bow", None), ("discrim", disc)):
        p = PPLM(lm, tok, PPLMConfig(attribute=attribute, step_size=0.0, top_k=5, max_words=8), d)
        goal = p.target("semantic", "food : Italian")
        a = p.generate([goal] * 3, torch.Generator().manual_seed(2))
        b = sample_plain(lm, tok, 3, 8, 5, torch.Generator().manual_seed(2))
        assert a == b


def test_pplm_perturbation_raises_the_bag_of_words(tiny):
    lm, tok = tiny
    p = PPLM(lm, tok, PPLMConfig(attribute="bow", step_size=0.5, iterations=3, kl_scale=0.0, top_k=5, max_words=8))
    bag = bag_mask(tok, "italian").float()[None]
    ids = torch.tensor([tok.encode("The Eagle is")[:-1]])
    out = lm(input_ids=ids[:, :-1], use_cache=True)
    past = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
    log_p = next_log_probs(lm(input_ids=ids).logits[:, -1], tok, 1)
    delta = p._perturb(past, ids[:, -1:], log_p, torch.zeros(1, lm.config.n_embd), ids.shape[1], bag)
    from diffusion_lm.baselines.pplm import _cache

    pert = lm(input_ids=ids[:, -1:], past_key_values=_cache([(k + dk, v + dv) for (k, v), (dk, dv) in zip(past, delta)]))
    before = (log_p.exp() * bag).sum()
    after = (torch.softmax(pert.logits[:, -1], -1) * bag).sum()
    assert after > before


def test_pplm_refuses_tasks_it_cannot_express(tiny):
    lm, tok = tiny
    p = PPLM(lm, tok, PPLMConfig(attribute="bow"))
    with pytest.raises(UserError, match="no attribute model for task 'pos'"):
        p.target("pos", "DT NN")
    with pytest.raises(UserError, match="discrim or bow"):
        PPLM(lm, tok, PPLMConfig(attribute="topic"))


def test_states_is_the_semantic_metric_rule():
    assert states("the eagle is a pub".split(), value_key("The Eagle"))
    assert not states("eagle the".split(), value_key("The Eagle"))


def test_train_and_run_baselines_from_the_cli(tmp_path, capsys):
    from diffusion_lm.cli.main import run
    from diffusion_lm.eval.report import check_generations
    from diffusion_lm.lm import ARLMConfig, ARTrainConfig, train_lm
    from diffusion_lm.data.e2e import DataConfig

    lm_dir = tmp_path / "lm"
    train_lm(ARLMConfig(layers=1, hidden=32, heads=2, dropout=0.0),
             ARTrainConfig(out_dir=str(lm_dir), steps=3, batch_size=8, warmup=1, threads=1), DataConfig(limit=200),
             progress=False)
    small = ["limit=24", "eval_size=8", "min_count=1", "batch_size=8"]
    assert run(["train-baseline", "method=fudge", f"lm={lm_dir}", f"out_dir={tmp_path / 'fudge'}", "fudge.steps=2",
                *[f"fudge.{s}" for s in small]]) == 0
    assert run(["train-baseline", "method=pplm", f"lm={lm_dir}", f"out_dir={tmp_path / 'pplm'}", "pplm.epochs=1",
                *[f"pplm.{s}" for s in small]]) == 0
    pair = json.loads((tmp_path / "fudge" / "config.json").read_text())["pairs"][0]
    for method in ("fudge", "pplm"):
        out = tmp_path / f"{method}.jsonl"
        assert run(["baseline", f"method={method}", "task=semantic", f"target={pair}", "n=2", f"lm={lm_dir}",
                    f"attribute_model={tmp_path / method}", f"output={out}", f"{method}.max_words=6"]) == 0
        rows = check_generations([json.loads(line) for line in out.read_text().splitlines()])
        assert len(rows) == 2 and {r["system"] for r in rows} == {method}
    assert run(["baseline", "method=fudge", "task=semantic", "target=food : Martian", f"lm={lm_dir}",
                f"attribute_model={tmp_path / 'fudge'}", f"output={tmp_path / 'bad.jsonl'}"]) == 2
    assert not (tmp_path / "bad.jsonl").exists()
    assert run(["baseline", "method=beam", "task=pos", "target=DT"]) == 2
    assert run(["baseline", "method=fudge", f"attribute_model={tmp_path / 'pplm'}", f"lm={lm_dir}",
                "task=semantic", f"target={pair}"]) == 2  # a PPLM head is not a FUDGE discriminator
    assert "error:" in capsys.readouterr().err


def test_span_terms_of_a_target_are_the_span_head_at_the_candidate(tiny):
    lm, tok = tiny
    disc = tiny_disc(lm, tok)
    ids = torch.tensor([tok.encode("The Eagle is a")[:-1]])
    cand = torch.tensor([[5, 6]])
    states = disc.candidate_states(ids, cand)
    target = disc.target("spans", [1, 3, "NP"])
    got = disc.log_prob(states, 3, BatchedTargets.stack([target], len(disc.tags)))
    for j in range(2):
        full = torch.cat([ids[0], cand[0, j:j + 1]])[None]
        h = disc(full, torch.ones_like(full, dtype=torch.bool))
        ref = torch.nn.functional.logsigmoid(disc.span_logits(h, torch.tensor([[full.shape[1] - 1]]),
                                                              torch.tensor([[[1, 3, disc.span_labels.index("NP")]]])))
        assert torch.allclose(got[0, j], ref[0, 0, 0], atol=1e-5)


def test_report_puts_throughput_beside_table_2(tmp_path):
    from diffusion_lm.eval.report import markdown, read_throughput

    stats = {"n": 2, "mean": 50.0, "std": 0.0}
    result = {"fudge": {"pos": {"ctrl": stats, "lm": stats}, "semantic": {"ctrl": stats, "lm": stats}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps([{"system": "fudge", "task": "pos", "sentences_per_s": 1.0},
                                {"system": "fudge", "task": "semantic", "sentences_per_s": 3.0},
                                {"system": "fudge", "task": "tree", "sentences_per_s": 9.0}]))
    speed = read_throughput(str(path))
    text = markdown(result, {"throughput": speed})
    row = next(line for line in text.splitlines() if line.startswith("| fudge | 50.0"))
    assert row.endswith(" 1.50 |")  # harmonic mean over the tasks it ran: 2 / (1/1 + 1/3)
    assert "| fudge | 3.00 | 1.00 |" in text  # per-task table, semantic before pos as in TASKS
    path.write_text(json.dumps([{"task": "pos"}]))
    with pytest.raises(UserError, match="sentences_per_s"):
        read_throughput(str(path))


def test_fudge_training_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from diffusion_lm.baselines.fudge import FudgeTrainConfig, train_fudge
    from diffusion_lm.lm import ARLMConfig, ARTrainConfig, train_lm
    from diffusion_lm.data.e2e import DataConfig

    lm_dir = tmp_path / "lm"
    train_lm(ARLMConfig(layers=1, hidden=32, heads=2, dropout=0.1),
             ARTrainConfig(out_dir=str(lm_dir), steps=2, batch_size=8, warmup=1, threads=1), DataConfig(limit=100),
             progress=False)
    cfg = dict(batch_size=4, limit=12, eval_size=4, min_count=1, warmup=1, schedule="constant", log_every=1,
               checkpoint_every=2)
    train_fudge(str(lm_dir), str(tmp_path / "once"), FudgeTrainConfig(steps=4, **cfg), progress=False)
    (tmp_path / "twice").mkdir()
    for f in (tmp_path / "once").glob("oracle_*"):  # the oracles' labels, reused as a rerun would
        (tmp_path / "twice" / f.name).write_bytes(f.read_bytes())
    train_fudge(str(lm_dir), str(tmp_path / "twice"), FudgeTrainConfig(steps=2, **cfg), progress=False)  # "killed"
    train_fudge(str(lm_dir), str(tmp_path / "twice"), FudgeTrainConfig(steps=4, **cfg), progress=False)  # resumed
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("once", "twice"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "twice" / "train_log.jsonl").read_text().splitlines()) == 4
