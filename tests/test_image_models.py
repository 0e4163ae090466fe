"""The image side's first stage and CLIP pair (image/autoencoder.py, image/clip.py) and their trainers.

Fast and seeded: shapes, the KL term and InfoNCE against closed forms, the latent scale, folders and
their errors, and a tiny run of each trainer through the CLI whose resume after a kill equals an
unbroken run bit for bit.
"""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import kill_at
from diffusion_lm.cli.main import run
from diffusion_lm.errors import UserError
from diffusion_lm.image.autoencoder import AutoencoderConfig, AutoencoderKL, kl_divergence, psnr
from diffusion_lm.image.clip import ClipConfig, ClipModel, clip_score, info_nce, retrieval, retrieval_scores
from diffusion_lm.image.data import hard_negative, hard_negatives, is_heldout, make_batch
from diffusion_lm.image.shapes import VOCAB, parse_caption

TINY_AE = dict(channels=8, channel_mult=[1, 1, 2], groups=4)
TINY_CLIP = dict(embed_dim=16, image_channels=8, image_mult=[1, 2], groups=4, width=16, layers=1, heads=2, mlp_ratio=2)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- the autoencoder ---------------------------------------------------------------------------
def test_autoencoder_shapes_and_sampling():
    ae = AutoencoderKL(AutoencoderConfig(**TINY_AE)).eval()
    x = images(3)
    mean, logvar = ae.posterior(x)
    assert mean.shape == logvar.shape == (3, 4, 8, 8)
    z = ae.encode(x)
    assert z.shape == (3, 4, 8, 8) and torch.equal(z, mean * ae.scale_factor)
    assert ae.decode(z).shape == (3, 3, 32, 32)
    assert ae.decode(z * 100, clamp=True).abs().max() <= 1
    draw = lambda: ae.encode(x, sample=True, generator=torch.Generator().manual_seed(1))  # noqa: E731
    assert torch.equal(draw(), draw()) and not torch.equal(draw(), z)
    with pytest.raises(UserError, match="encodes images"):
        ae.encode(torch.zeros(1, 3, 30, 30))
    with pytest.raises(UserError, match="decodes latents"):
        ae.decode(torch.zeros(1, 3, 8, 8))
    assert AutoencoderConfig().factor == 4  # the default: two x2 downsamples, 32 -> 8


def test_kl_term_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    normal = torch.distributions.Normal
    expect = torch.distributions.kl_divergence(normal(mean, (0.5 * logvar).exp()), normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mean, logvar), expect, atol=1e-4)
    assert torch.equal(kl_divergence(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)), torch.zeros(1))
    # one value by hand: mu = 1, sigma^2 = e -> 1/2 (1 + e - 1 - 1)
    assert kl_divergence(torch.ones(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.5 * (math.e - 1))

    ae = AutoencoderKL(AutoencoderConfig(**TINY_AE))
    x, noise = images(2), torch.randn(2, 4, 8, 8, generator=g)
    loss, terms = ae.loss(x, noise, kl_weight=0.5, rec_loss="mse")
    recon, m, lv = ae(x, noise)
    assert torch.allclose(terms["rec"], (recon - x).pow(2).mean())
    assert torch.allclose(terms["kl"], kl_divergence(m, lv).mean())
    assert torch.allclose(loss, terms["rec"] + 0.5 * terms["kl"] / 3072)
    with pytest.raises(UserError, match="rec_loss"):
        ae.loss(x, rec_loss="l3")


def test_scale_factor_gives_unit_variance_latents_and_decode_undoes_it():
    ae = AutoencoderKL(AutoencoderConfig(**TINY_AE)).eval()
    x = images(64)
    raw = ae.posterior(x)[0]
    scale = ae.calibrate(x)
    assert scale == pytest.approx(1 / raw.std().item())
    assert ae.encode(x).std().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(ae.decode(ae.encode(x)), ae.decoder(raw), atol=1e-5)
    assert ae.encode(images(64, seed=1)).std().item() == pytest.approx(1.0, abs=0.1)  # other images of the kind


def test_autoencoder_round_trip_and_bad_folders(tmp_path):
    ae = AutoencoderKL(AutoencoderConfig(**TINY_AE)).eval()
    ae.calibrate(images(16))
    ae.save_pretrained(tmp_path / "ae", manifest={"command": "test"})
    back = AutoencoderKL.from_pretrained(tmp_path / "ae")
    assert back.scale_factor == ae.scale_factor and back.config == ae.config
    x = images(2)
    assert torch.equal(back.encode(x), ae.encode(x)) and torch.equal(back.decode(back.encode(x)), ae.decode(ae.encode(x)))
    saved = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert saved["scale_factor"] == ae.scale_factor and saved["latent_channels"] == 4

    with pytest.raises(UserError, match="autoencoder folder not found"):
        AutoencoderKL.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "ae" / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "scale_factor"}))
    with pytest.raises(UserError, match="no scale_factor"):
        AutoencoderKL.from_pretrained(tmp_path / "ae")
    (tmp_path / "ae" / "config.json").write_text(json.dumps({**saved, "depth": 3}))
    with pytest.raises(UserError, match="unknown AutoencoderConfig keys"):
        AutoencoderKL.from_pretrained(tmp_path / "ae")
    (tmp_path / "ae" / "config.json").write_text(json.dumps({**saved, "channels": 16}))
    with pytest.raises(UserError, match="weight"):
        AutoencoderKL.from_pretrained(tmp_path / "ae")
    with pytest.raises(UserError, match="groups"):
        AutoencoderKL(AutoencoderConfig(channels=10, groups=4))


def test_psnr_on_uint8_values():
    x = images(2)
    assert psnr(x, x) == {"psnr": 100.0, "psnr_mean": 100.0}
    y = x.clone()
    u8 = ((x + 1) * 127.5).round()
    y = (u8 + torch.where(u8 < 128, 10.0, -10.0)) / 127.5 - 1  # every value off by 10 levels
    assert psnr(x, y)["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-3)


# ---- CLIP --------------------------------------------------------------------------------------
def test_clip_shapes_and_the_empty_caption():
    clip = ClipModel(ClipConfig(**TINY_CLIP)).eval()
    x = images(3)
    captions = ["a small red circle at the top left", "a blue square left of a large yellow triangle", ""]
    img, txt = clip.encode_image(x), clip.encode_text(captions)
    assert img.shape == txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert clip.image_features(x).shape == (3, 16)  # the last level's width (8 x 2)
    states, mask = clip.text_states(captions)
    L = clip.config.max_len
    assert states.shape == (3, L, 16) and mask.shape == (3, L) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [10, 11, 2]  # <bos> words <eos>; "" is <bos> <eos>
    assert torch.isfinite(states).all() and (states[~mask] == 0).all()
    ids, _ = clip.tokenize(["a red circle"])
    assert clip.tokenizer.decode(ids[0]) == "a red circle"
    assert set(VOCAB) <= set(clip.tokenizer.words)
    s = clip_score(clip, x, captions)
    assert s.shape == (3,) and (s >= 0).all() and (s <= 100).all()


def test_attention_pooling_reads_where_things_are(tmp_path):
    torch.manual_seed(0)
    clip = ClipModel(ClipConfig(**TINY_CLIP, image_pool="attention")).eval()
    x = images(3)
    assert clip.encode_image(x).shape == (3, 16) and clip.image_features(x).shape == (3, 16)
    # the mean over the grid cannot tell two objects from the same two trading places; attention pooling can
    mean = ClipModel(ClipConfig(**TINY_CLIP)).eval()
    side = 16  # TINY_CLIP: two levels, 32 -> 16
    grid = torch.zeros(1, 16, side, side)
    grid[..., 8, 2], grid[..., 8, 12] = torch.randn(16), torch.randn(16)
    swapped = grid.clone()
    swapped[..., 8, 2], swapped[..., 8, 12] = grid[..., 8, 12], grid[..., 8, 2]
    with torch.no_grad():
        assert torch.allclose(mean.image.pooled(grid), mean.image.pooled(swapped), atol=1e-6)
        assert (clip.image.pooled(grid) - clip.image.pooled(swapped)).abs().max() > 1e-5
    with pytest.raises(UserError, match="attention pooling"):
        clip.image.pooled(torch.zeros(1, 16, 8, 8))
    clip.save_pretrained(tmp_path / "clip")
    assert torch.equal(ClipModel.from_pretrained(tmp_path / "clip").encode_image(x), clip.encode_image(x))
    with pytest.raises(UserError, match="image_pool"):
        ClipModel(ClipConfig(**TINY_CLIP, image_pool="max"))


def test_options_added_later_keep_old_fingerprints():
    """A CLIP saved before lexical_states / image_pool existed has neither key; at their defaults they stay out
    of the saved and fingerprinted config, so the UNets trained on such a CLIP still find it theirs."""
    from diffusion_lm.image.unet import fingerprint

    plain = ClipModel(ClipConfig(**TINY_CLIP))
    assert not {"lexical_states", "image_pool"} & set(plain.config_dict())
    attention = ClipModel(ClipConfig(**TINY_CLIP, image_pool="attention"))
    assert attention.config_dict()["image_pool"] == "attention" and "lexical_states" not in attention.config_dict()
    lexical = ClipModel(ClipConfig(**TINY_CLIP, lexical_states=True))
    lexical.load_state_dict(plain.state_dict())
    assert fingerprint(lexical) != fingerprint(plain)  # another context: another CLIP for the UNet


def test_lexical_states_follow_the_contextual_ones_and_ignore_the_context():
    clip = ClipModel(ClipConfig(**TINY_CLIP)).eval()
    lexical = ClipModel(ClipConfig(**TINY_CLIP, lexical_states=True)).eval()
    lexical.load_state_dict(clip.state_dict())  # the option adds no weights
    captions = ["a small red circle left of a large cyan square", "a small blue circle left of a large cyan square", ""]
    states, mask = clip.text_states(captions)
    both, both_mask = lexical.text_states(captions)
    L = clip.config.max_len
    assert both.shape == (3, 2 * L, 16) and torch.equal(both_mask, torch.cat([mask, mask], 1))
    assert torch.equal(both[:, :L], states) and (both[~both_mask] == 0).all()
    # a word's lexical state depends on the word and its place only: "red" -> "blue" changes that one token
    changed = (both[0, L:] - both[1, L:]).abs().sum(-1) > 0
    assert changed.nonzero().flatten().tolist() == [3]  # <bos> a small RED
    assert (states[0] - states[1]).abs().sum(-1)[mask[0]].gt(0).all()  # the contextual states all change
    assert torch.equal(lexical.encode_text(captions), clip.encode_text(captions))  # the embedding is the same
    with pytest.raises(UserError, match="lexical_states"):
        ClipModel(ClipConfig(**TINY_CLIP, lexical_states="yes"))


def test_unknown_words_and_long_captions_are_one_line_errors():
    clip = ClipModel(ClipConfig(**TINY_CLIP))
    with pytest.raises(UserError, match="unknown word 'purpleish'"):
        clip.encode_text(["a purpleish circle"])
    with pytest.raises(UserError, match="unknown word '<pad>'"):
        clip.text_states(["a <pad> circle"])
    with pytest.raises(UserError, match="at most"):
        clip.text_states([" ".join(["a"] * clip.config.max_len)])
    with pytest.raises(UserError, match="clip.heads"):
        ClipModel(ClipConfig(**{**TINY_CLIP, "heads": 3}))


def test_info_nce_matches_the_closed_form():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0], [0.0, 3.0, 1.0]])

    def ce(row, k):  # -log softmax(row)[k]
        return -row[k] + math.log(sum(math.exp(v) for v in row))

    rows = [ce(logits[i].tolist(), i) for i in range(3)]
    cols = [ce(logits[:, j].tolist(), j) for j in range(3)]
    expect = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert info_nce(logits).item() == pytest.approx(expect, rel=1e-6)
    # rows 0 and 2 share a caption: each is a positive of the other, the target split evenly
    grouped = [0.5 * (ce(logits[0].tolist(), 0) + ce(logits[0].tolist(), 2)), ce(logits[1].tolist(), 1),
               0.5 * (ce(logits[2].tolist(), 0) + ce(logits[2].tolist(), 2))]
    grouped_cols = [0.5 * (ce(logits[:, 0].tolist(), 0) + ce(logits[:, 0].tolist(), 2)), ce(logits[:, 1].tolist(), 1),
                    0.5 * (ce(logits[:, 2].tolist(), 0) + ce(logits[:, 2].tolist(), 2))]
    expect = 0.5 * (sum(grouped) / 3 + sum(grouped_cols) / 3)
    assert info_nce(logits, torch.tensor([0, 1, 0])).item() == pytest.approx(expect, rel=1e-6)
    assert info_nce(logits, torch.arange(3)).item() == pytest.approx(info_nce(logits).item(), rel=1e-6)


def test_clip_loss_and_retrieval_scores():
    clip = ClipModel(ClipConfig(**TINY_CLIP))
    x = images(4)
    loss, terms = clip.loss(x, ["a red circle", "a blue square", "a red circle", ""])
    assert loss.requires_grad and set(terms) == {"loss", "scale", "acc"}
    assert terms["scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]])
    s = retrieval_scores(sim, ["a", "b", "c"])
    assert s["image_to_text_top1"] == pytest.approx(2 / 3, abs=1e-4) and s["text_to_image_top1"] == 1.0  # caption b: column max 0.2 at its own image
    assert s["image_to_text_top5"] == 1.0
    assert retrieval_scores(sim, ["a", "a", "c"])["image_to_text_top1"] == 1.0  # a repeated caption hits for both
    assert retrieval(clip, x[:3], ["a red circle", "a blue square", "a green diamond"])["n"] == 3


def test_hard_negatives_swap_what_a_bag_of_words_cannot_tell_apart():
    two = "a small red circle left of a large cyan square"
    assert hard_negatives(two) == {
        "relation": "a small red circle right of a large cyan square",
        "order": "a large cyan square left of a small red circle",
        "colour": "a small cyan circle left of a large red square",
        "size": "a large red circle left of a small cyan square",
        "shape": "a small red square left of a large cyan circle"}
    # a held-out caption (blue square) keeps only what is not held out, unless probing
    assert set(hard_negatives("a small red circle left of a large blue square")) == {"colour", "shape"}
    assert len(hard_negatives("a small red circle left of a large blue square", allow_heldout=True)) == 5
    # a size stated for one object moves to the other; equal attributes are not swapped
    assert hard_negatives("a red circle above a small red circle") == {
        "relation": "a red circle below a small red circle", "order": "a small red circle above a red circle",
        "size": "a small red circle above a red circle"}
    assert "order" not in hard_negatives("a red circle above a red circle")  # the same caption
    one = hard_negatives("a small red circle at the top left")
    assert one == {"one_shape": "a small red square at the top left", "one_colour": "a small yellow circle at the top left",
                   "one_size": "a large red circle at the top left", "one_position": "a small red circle at the top"}
    # a negative naming a held-out composition (blue square; a circle directly above a square) is left out
    assert "one_shape" not in hard_negatives("a small blue circle at the top")
    assert hard_negatives("a small blue circle at the top", allow_heldout=True)["one_shape"] == \
        "a small blue square at the top"
    assert "relation" not in hard_negatives("a red circle below a red square")
    # drawing: only the kinds asked for, and None where the caption has none of them
    r = random.Random(0)
    assert {hard_negative(two, r, ["relation", "order"]) for _ in range(40)} == {
        "a small red circle right of a large cyan square", "a large cyan square left of a small red circle"}
    assert hard_negative("a small red circle at the top left", r, ["relation"]) is None
    captions = make_batch("train", 300, 0)[1]
    for c in captions:
        for neg in hard_negatives(c).values():
            assert neg != c and not is_heldout(parse_caption(neg))
    with pytest.raises(UserError, match="unknown word"):
        hard_negatives("a red blob")


def test_clip_loss_with_hard_negatives_matches_the_closed_form():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    txt = F.normalize(torch.tensor([[0.9, 0.1], [0.0, 1.0]]), dim=-1)
    neg = F.normalize(torch.tensor([[0.8, 0.6], [1.0, 1.0]]), dim=-1)
    clip = ClipModel(ClipConfig(**TINY_CLIP))
    s = clip.temperature_scale().item()
    ids = torch.tensor([[1, 5, 2], [1, 6, 2]])

    def ce(row, k):
        return -row[k] + math.log(sum(math.exp(v) for v in row))

    sim, negsim = (s * img @ txt.t()).tolist(), (s * img @ neg.t()).tolist()
    rows = [ce(sim[i] + negsim[i], i) for i in range(2)]  # each image against both captions and both negatives
    cols = [ce([sim[0][j], sim[1][j]], j) for j in range(2)]  # each caption against the images only
    loss, terms = clip.pair_loss(img, txt, ids, neg, torch.tensor([[1, 7, 2], [1, 8, 2]]))
    assert loss.item() == pytest.approx(0.5 * (sum(rows) / 2 + sum(cols) / 2), rel=1e-5)
    assert terms["neg_acc"].item() == pytest.approx(sum(sim[i][i] > negsim[i][i] for i in range(2)) / 2)
    # a negative that is another pair's caption is that image's positive too
    loss, _ = clip.pair_loss(img, txt, ids, neg, torch.tensor([[1, 6, 2], [1, 8, 2]]))
    rows[1] = 0.5 * (ce(sim[1] + negsim[1], 1) + ce(sim[1] + negsim[1], 2))
    assert loss.item() == pytest.approx(0.5 * (sum(rows) / 2 + sum(cols) / 2), rel=1e-5)
    # through the captions: negatives add terms and keep the gradient
    loss, terms = clip.loss(images(2), ["a red circle left of a blue square", "a small green diamond at the top"],
                            ["a red circle right of a blue square", "a large green diamond at the top"])
    assert loss.requires_grad and "neg_acc" in terms


def test_clip_round_trip_and_bad_folders(tmp_path):
    clip = ClipModel(ClipConfig(**TINY_CLIP)).eval()
    clip.save_pretrained(tmp_path / "clip")
    back = ClipModel.from_pretrained(tmp_path / "clip")
    caps = ["a red circle", ""]
    assert torch.equal(back.text_states(caps)[0], clip.text_states(caps)[0])
    assert torch.equal(back.encode_image(images(2)), clip.encode_image(images(2)))
    with pytest.raises(UserError, match="CLIP model folder not found"):
        ClipModel.from_pretrained(tmp_path / "nowhere")
    saved = json.loads((tmp_path / "clip" / "config.json").read_text())
    (tmp_path / "clip" / "config.json").write_text(json.dumps({**saved, "width": "wide"}))
    with pytest.raises(UserError, match="width must be int"):
        ClipModel.from_pretrained(tmp_path / "clip")


# ---- the trainers, through the CLI -------------------------------------------------------------
COMMANDS = {"autoencoder": ("train-autoencoder", "autoencoder_preset=tiny"), "clip": ("train-clip", "clip_preset=tiny"),
            "clip_neg": ("train-clip", "clip_preset=tiny", "train.hard_negatives=true")}


def train_tiny(kind: str, out) -> int:
    name, *args = COMMANDS[kind]
    return run([name, *args, f"train.out_dir={out}"])


@pytest.mark.parametrize("kind", ["autoencoder", "clip", "clip_neg"])
def test_tiny_training_writes_the_folder_and_resumes_exactly_after_a_kill(kind, tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_tiny(kind, a) == 0
    files = {"config.json", "model.safetensors", "manifest.json", "checkpoint", "train_log.jsonl", "loss_curve.png",
             "metrics.json", "train_config.json"} | ({"reconstructions.png"} if kind == "autoencoder" else set())
    assert files <= {p.name for p in a.iterdir()}
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["command"] == f"diffusion-lm {' '.join(COMMANDS[kind])} train.out_dir={a}"
    metrics = manifest["metrics"]
    assert metrics["steps"] == 6
    if kind == "autoencoder":
        model = AutoencoderKL.from_pretrained(a)
        assert metrics["latent_shape"] == [4, 8, 8] and metrics["scale_factor"] == pytest.approx(model.scale_factor)
        assert {"psnr", "psnr_mean", "oracle_original", "oracle_reconstructed", "caption_gap_points"} <= set(metrics["test"])
    else:
        ClipModel.from_pretrained(a)
        assert metrics["test"]["sets"] == 2 and "image_to_text_top1" in metrics["test"] and "heldout" in metrics
        assert {"relation", "colour", "one_shape"} <= set(metrics["test"]["binding"])
        assert 0 <= metrics["heldout"]["binding"]["relation"]["accuracy"] <= 1
        log = [json.loads(line) for line in (a / "train_log.jsonl").read_text().splitlines()]
        assert any("neg_acc" in str(r) for r in log) == (kind == "clip_neg")

    restore = kill_at(monkeypatch, 4)
    assert train_tiny(kind, b) == 130  # the CLI's answer to an interrupt
    restore()
    assert json.loads((b / "checkpoint" / "state.json").read_text())["step"] == 3
    assert train_tiny(kind, b) == 0
    for f in ("checkpoint/state.safetensors", "model.safetensors"):
        sa, sb = load_file(str(a / f)), load_file(str(b / f))
        assert sa.keys() == sb.keys()
        assert max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].numel()) == 0, f
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    assert ca == cb  # the autoencoder's scale_factor included
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    timing = ("train_minutes", "seconds_per_step")
    assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}


def test_a_resumed_run_with_another_model_is_refused(tmp_path, capsys):
    out = tmp_path / "a"
    assert run(["train-autoencoder", "autoencoder_preset=tiny", f"train.out_dir={out}", "train.steps=3"]) == 0
    capsys.readouterr()
    assert run(["train-autoencoder", "autoencoder_preset=tiny", f"train.out_dir={out}", "train.steps=6",
                "autoencoder.channels=16"]) == 2
    assert "different autoencoder.channels" in capsys.readouterr().err
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={tmp_path / 'c'}", "train.batch_size=1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    for bad, message in (("train.negative_kinds=[bogus]", "negative_kinds"), ("train.negative_kinds=[]", "negative_kinds"),
                         ("clip.image_pool=max", "image_pool")):
        assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={tmp_path / 'n'}", "train.hard_negatives=true",
                    bad]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "n").exists()
    # a CLIP run resumed with another image pooling is refused, whichever side holds the default
    clip_run = tmp_path / "c2"
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={clip_run}", "train.steps=2"]) == 0
    capsys.readouterr()
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={clip_run}", "train.steps=4", "clip.image_pool=attention"]) == 2
    assert "different clip.image_pool" in capsys.readouterr().err
