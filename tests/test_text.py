import pytest
import torch

from diffusion_lm.core import GaussianDiffusion
from diffusion_lm.errors import UserError
from diffusion_lm.text import DiffusionLM, DiffusionLMConfig, SampleConfig, WordTokenizer, from_pretrained
from diffusion_lm.text import diffusion_config, diffusion_lm_loss, generate, save_pretrained
from diffusion_lm.data.e2e import DataConfig, load_e2e, tokenize_e2e

SENTS = ["the eagle is a cheap pub .", "the mill serves italian food in the city centre ."]
DIFFUSION = GaussianDiffusion.from_config(diffusion_config(steps=50))


def tiny_model(vocab=20, **kw):
    cfg = dict(vocab_size=vocab, max_len=12, emb_dim=8, hidden=32, layers=1, heads=2, mlp_ratio=2,
               dropout=0.0)
    cfg.update(kw)
    return DiffusionLM(DiffusionLMConfig(**cfg))


def test_tokenizer_round_trip(tmp_path):
    tok = WordTokenizer.train(SENTS)
    ids, fits = tok.encode_batch(SENTS, 16)
    assert fits.all() and ids.shape == (2, 16)
    assert ids[0, 0] == tok.start_id and ids[0, 8] == tok.end_id and ids[0, 9] == tok.pad_id
    assert [tok.decode(r) for r in ids] == SENTS
    tok.save(tmp_path)
    again = WordTokenizer.load(tmp_path)
    assert again.encode(SENTS[1]) == tok.encode(SENTS[1])
    assert tok.decode(tok.encode("the zebra pub")) == "the [UNK] pub"
    _, fits = tok.encode_batch(SENTS, 9)
    assert fits.tolist() == [True, False]


def test_tokenize_e2e_matches_train_style():
    assert tokenize_e2e("It isn't family-friendly, prices £20-25.") == "It isn 't family - friendly , prices £ 20 - 25 ."
    assert tokenize_e2e("The Eagle's menu costs £10.50.") == "The Eagle 's menu costs £ 10.50 ."


def test_shipped_e2e_loads():
    train = load_e2e("train", DataConfig(limit=5))
    assert len(train) == 5 and set(train.column_names) == {"mr", "text"}
    assert train[0]["text"].startswith("The Vaults pub near Café Adriatic")
    valid = load_e2e("valid")
    assert len(valid) == 4672 and " , " in valid[0]["text"]
    with pytest.raises(UserError, match="data.path"):
        load_e2e("train", DataConfig(source="csv"))
    with pytest.raises(UserError, match="unknown E2E split"):
        load_e2e("dev")


def test_clamp_returns_exact_embedding_rows():
    model = tiny_model()
    x = torch.randn(3, 5, 8)
    clamped = model.clamp(x)
    E = model.embedding.weight
    ids = torch.cdist(x.reshape(-1, 8), E).argmin(-1)
    assert torch.equal(clamped.reshape(-1, 8), E[ids])
    assert torch.equal(model.round(x).reshape(-1), ids)


def test_rounding_is_softmax_over_negative_distance():
    model = tiny_model()
    x = torch.randn(2, 3, 8)
    logp = model.logits(x).log_softmax(-1)
    d2 = ((x[..., None, :] - model.embedding.weight) ** 2).sum(-1)
    torch.testing.assert_close(logp, (-d2).log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_fused_word_nll_matches_autograd_cross_entropy(monkeypatch):
    import diffusion_lm.text.rounding as rounding

    monkeypatch.setattr(rounding, "_BLOCK_BYTES", 4 * 30 * 7)  # 7 rows a block: several blocks and a ragged last one
    torch.manual_seed(0)
    emb = torch.randn(30, 8, requires_grad=True)
    x = (3 * torch.randn(2, 5, 4, 8)).requires_grad_()
    ids = torch.randint(0, 30, (2, 5, 4))
    weight = torch.rand(2, 5, 4)  # uneven upstream gradient per position
    d2 = ((x[..., None, :] - emb) ** 2).sum(-1)  # −log p from the definition: softmax over −‖x − EMB(w)‖²
    want = torch.nn.functional.cross_entropy(-d2.reshape(-1, 30), ids.reshape(-1), reduction="none").view(2, 5, 4)
    got = rounding.nearest_word_nll(x, emb, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want_grads = torch.autograd.grad((want * weight).sum(), [x, emb])
    got_grads = torch.autograd.grad((got * weight).sum(), [x, emb])
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="do not line up"):
        rounding.nearest_word_nll(x, emb, ids[..., :3])
    # far from every embedding, p(w) underflows float32: −log p(w) comes from the logits, finite and exact
    far = (30 * torch.randn(6, 8, dtype=torch.float64)).float().requires_grad_()
    want = torch.nn.functional.cross_entropy(-((far[:, None] - emb) ** 2).sum(-1), ids.reshape(-1)[:6],
                                             reduction="none")
    got = rounding.nearest_word_nll(far, emb, ids.reshape(-1)[:6])
    assert torch.isfinite(got).all() and (want > 100).any()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("self_condition,anchor", [(False, 0.0), (True, 1.0)])
def test_objective_falls_on_tiny_overfit(self_condition, anchor):
    model = tiny_model(self_condition=self_condition)
    ids = torch.randint(4, 20, (8, 12))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.randint(0, 50, (8,))
    first = None
    for _ in range(150):
        terms = diffusion_lm_loss(model, DIFFUSION, ids, anchor_weight=anchor, t=t)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        first = first if first is not None else terms["loss"].item()
    assert set(terms) >= {"mse", "prior", "rounding", "loss"}
    assert terms["loss"].item() < 0.5 * first


def test_save_load_round_trip_and_mismatch(tmp_path):
    tok = WordTokenizer.train(SENTS)
    model = tiny_model(vocab=len(tok)).eval()
    save_pretrained(model, tok, tmp_path / "m", diffusion=DIFFUSION)
    loaded, tok2, diffusion = from_pretrained(tmp_path / "m")
    x, t = torch.randn(2, 12, 8), torch.tensor([3, 40])
    torch.testing.assert_close(loaded(x, t), model(x, t))
    assert len(tok2) == len(tok)
    assert diffusion.config == DIFFUSION.config and torch.equal(diffusion.betas, DIFFUSION.betas)
    other = WordTokenizer.train(SENTS + ["a brand new sentence"])
    other.save(tmp_path / "m")
    with pytest.raises(UserError, match="tokenizer has"):
        from_pretrained(tmp_path / "m")
    save_pretrained(tiny_model(vocab=len(tok), hidden=64), tok, tmp_path / "m2", diffusion=DIFFUSION)
    (tmp_path / "m2" / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    with pytest.raises(UserError, match="shape"):
        from_pretrained(tmp_path / "m2")
    with pytest.raises(UserError, match="not found"):
        from_pretrained(tmp_path / "nothing")


def test_generate_decodes_sentences():
    tok = WordTokenizer.train(SENTS)
    model = tiny_model(vocab=len(tok))
    out = generate(model, tok, DIFFUSION, 3, SampleConfig(steps=5), progress=False)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    again = generate(model, tok, DIFFUSION, 3, SampleConfig(steps=5), progress=False)
    assert out == again  # seeded
    with pytest.raises(UserError, match="length"):
        generate(model, tok, DIFFUSION, 1, SampleConfig(steps=5, length=13), progress=False)
    with pytest.raises(TypeError, match="GaussianDiffusion"):  # the diffusion is not the model's to supply
        generate(model, tok, 3, SampleConfig(steps=5), progress=False)


def test_mbr_picks_the_consensus_sentence():
    from diffusion_lm.text.mbr import mbr_pick, mbr_select
    group = ["the eagle is a pub near the river .", "eagle the pub a is river .",
             "the eagle is a pub by the river .", "the mill is a cheap pub ."]
    assert mbr_pick(group) in (0, 2)  # the two that share most n-grams with the rest
    assert mbr_pick(["one"]) == 0 and mbr_pick(["", "a b"]) == 1
    assert mbr_select(group + group[::-1], 4) == [group[mbr_pick(group)], group[::-1][mbr_pick(group[::-1])]]
    with pytest.raises(ValueError, match="groups of 3"):
        mbr_select(group, 3)


def test_generate_with_mbr_keeps_one_candidate_of_each_group():
    from diffusion_lm.text.mbr import mbr_select
    tok = WordTokenizer.train(SENTS)
    model = tiny_model(vocab=len(tok))
    cfg = SampleConfig(steps=5)
    candidates = generate(model, tok, DIFFUSION, 6, cfg, progress=False)
    picked = generate(model, tok, DIFFUSION, 2, cfg, progress=False, mbr=3)
    assert picked == mbr_select(candidates, 3)
    assert picked[0] in candidates[:3] and picked[1] in candidates[3:]
    with pytest.raises(UserError, match="mbr must be at least 1"):
        generate(model, tok, DIFFUSION, 2, cfg, progress=False, mbr=0)


def test_diffusion_is_saved_beside_the_model_and_old_folders_still_load(tmp_path):
    import json

    tok = WordTokenizer.train(SENTS)
    model = tiny_model(vocab=len(tok)).eval()
    save_pretrained(model, tok, tmp_path / "m", diffusion=diffusion_config(schedule="cosine", steps=30))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "schedule" not in config and "diffusion_steps" not in config
    assert json.loads((tmp_path / "m" / "diffusion.json").read_text()) == {"schedule": "cosine", "steps": 30}
    # a folder from before diffusion.json: the process lived in config.json
    (tmp_path / "m" / "diffusion.json").unlink()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "schedule": "linear", "diffusion_steps": 40}))
    loaded, _, diffusion = from_pretrained(tmp_path / "m")
    assert (diffusion.config.schedule, diffusion.num_timesteps) == ("linear", 40)
    x, t = torch.randn(2, 12, 8), torch.tensor([3, 30])
    torch.testing.assert_close(loaded(x, t), model(x, t))
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="diffusion.json"):
        from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion.json").write_text(json.dumps({"schedule": "sqrt", "steps": 0}))
    with pytest.raises(UserError, match="diffusion.json: steps"):
        from_pretrained(tmp_path / "m")
