"""The image UNet, its trainer, ImagePipeline and the imagine / evaluate-image commands.

Fast and seeded: UNets of a few thousand weights, a handful of steps, and tiny untrained autoencoders
and CLIP pairs where a test needs the parts' interfaces and not their training.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import kill_at
from diffusion_lm import training
from diffusion_lm.core import ClassifierFreeGuidance, DiffusionConfig, GaussianDiffusion, sample
from diffusion_lm.errors import UserError
from diffusion_lm.image.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lm.image.clip import ClipConfig, ClipModel
from diffusion_lm.image.data import load_shapes
from diffusion_lm.image.unet import UNet, UNetConfig, match_parts


# ---- small parts: an untrained tiny autoencoder and CLIP pair (their training is tested beside them) ----
def tiny_autoencoder(latent: int = 4, levels: int = 3) -> AutoencoderKL:
    """32 x 32 -> latent x 8 x 8 (3 levels; 4 levels make 4 x 4)."""
    return AutoencoderKL(AutoencoderConfig(latent_channels=latent, channels=8, channel_mult=[1] * levels, groups=4))


def tiny_clip(width: int = 16) -> ClipModel:
    return ClipModel(ClipConfig(embed_dim=8, image_channels=8, image_mult=[1, 1], groups=4, width=width, layers=1,
                                heads=2, mlp_ratio=2))


def captioned_scenes(n: int, seed: int = 0):
    """n scenes of the shapes train split (columns image, caption)."""
    return load_shapes("train", n, seed)


def perturbed(module: nn.Module, scale: float = 0.05) -> nn.Module:
    """The zero-initialised output layers made non-zero, as after some training."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def tiny_config(space: str = "latent", **kw) -> UNetConfig:
    size = {"pixel": (3, 32)}.get(space, (4, 8))
    base = dict(space=space, in_channels=size[0], image_size=size[1], channels=8, channel_mult=[1, 2], blocks=1,
                attention_resolutions=[size[1] // 2], heads=2, context_dim=16, groups=4)
    return UNetConfig(**{**base, **kw})


# ---- the UNet ----------------------------------------------------------------------------------
@pytest.mark.parametrize("space,prediction", [("latent", "eps"), ("pixel", "v")])
def test_unet_output_has_the_input_shape(space, prediction):
    cfg = tiny_config(space, prediction=prediction, channel_mult=[1, 2, 2] if space == "pixel" else [1, 2])
    unet = UNet(cfg)
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([0, 10, 99])
    ctx, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    assert unet(x, t, ctx, mask).shape == x.shape
    assert unet(x, t).shape == x.shape  # no caption: self-attention only
    n_attn = sum(isinstance(m, type(unet.middle[1])) for m in unet.modules())
    assert n_attn >= 3  # the middle's and the low resolution's transformers


def test_cross_attention_reads_the_context_and_respects_its_mask():
    unet = perturbed(UNet(tiny_config())).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 50])
    ctx = torch.randn(2, 6, 16)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    out = unet(x, t, ctx, mask)
    assert not torch.allclose(out, unet(x, t, torch.randn(2, 6, 16), mask), atol=1e-4)  # another caption
    padded = ctx.clone()
    padded[0, 3:] = 100 * torch.randn(3, 16)  # only masked-out positions of row 0 change
    again = unet(x, t, padded, mask)
    assert torch.allclose(again[0], out[0], atol=1e-5)
    unmasked = unet(x, t, padded, torch.ones(2, 6, dtype=torch.bool))
    assert not torch.allclose(unmasked[0], out[0], atol=1e-4)  # the same states unmasked are read


def test_bad_unet_config_is_one_line():
    for kw, key in ((dict(space="voxel"), "unet.space"), (dict(prediction="x0"), "unet.prediction"),
                    (dict(groups=3), "divisible"), (dict(channel_mult=[1, 2, 2, 2, 2]), "halved")):
        with pytest.raises(UserError, match=key):
            UNet(tiny_config(**kw))


def test_save_and_load_round_trip(tmp_path):
    unet = perturbed(UNet(tiny_config()))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    unet.save_pretrained(tmp_path, diffusion)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "diffusion.json"}
    back = UNet.from_pretrained(tmp_path)
    assert back.config == unet.config
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), back.state_dict().values()))
    from diffusion_lm.image.unet import load_diffusion

    assert load_diffusion(tmp_path).config == diffusion.config


def test_int8_weights_round_trip_within_half_a_step(tmp_path):
    from diffusion_lm import io

    torch.manual_seed(0)
    unet = perturbed(UNet(tiny_config()))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    unet.save_pretrained(tmp_path / "f32", diffusion)
    unet.save_pretrained(tmp_path / "i8", diffusion, dtype="int8")
    stored = io.load_tensors(tmp_path / "i8" / "model.safetensors")
    back = UNet.from_pretrained(tmp_path / "i8")
    for k, v in unet.state_dict().items():
        got = back.state_dict()[k]
        if k + io.INT8_SCALE in stored:  # a weight matrix: int8, off by at most half its channel's step
            assert stored[k].dtype == torch.int8 and v.dim() >= 2
            step = v.flatten(1).abs().amax(1) / 127
            assert ((got - v).flatten(1).abs() <= step[:, None] / 2 + 1e-7).all(), k
        else:  # biases and norms: float16
            assert stored[k].dtype == torch.float16 and torch.allclose(got, v, atol=1e-3, rtol=1e-3), k
    assert (tmp_path / "i8" / "model.safetensors").stat().st_size < 0.4 * (tmp_path / "f32" / "model.safetensors").stat().st_size
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([3, 70])
    c, m = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        a, b = unet.eval()(x, t, c, m), back(x, t, c, m)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    # scales that do not fit their weight are a corrupt file, in one line
    stored[next(k for k in stored if k.endswith(io.INT8_SCALE))] = torch.ones(3)
    io.save_tensors(tmp_path / "i8" / "model.safetensors", stored)
    with pytest.raises(UserError, match="int8 scales do not fit"):
        UNet.from_pretrained(tmp_path / "i8")


def test_eps_prediction_on_latents_at_zero_terminal_snr_is_refused(tmp_path):
    from diffusion_lm.image.train import train_unet
    from diffusion_lm.image.unet import eps_gain

    cosine = GaussianDiffusion.from_config(DiffusionConfig("cosine", 1000))
    linear = GaussianDiffusion.from_config(DiffusionConfig("linear", 1000))
    assert eps_gain(cosine) == pytest.approx(1 / cosine.alpha_bar[-1].sqrt().item()) and eps_gain(cosine) > 1e4
    assert 100 < eps_gain(linear) < 200
    cfg, _, train = unet_train_setup(tmp_path / "a", steps=2)
    with pytest.raises(UserError, match="unet.prediction=eps on latents .* use unet.prediction=v"):
        train_unet(replace(cfg, prediction="eps"), DiffusionConfig("cosine", 1000), train, progress=False,
                   dataset=captioned_scenes(8), autoencoder=tiny_autoencoder(), clip=tiny_clip())
    assert not (tmp_path / "a").exists()


def test_a_mismatched_autoencoder_is_refused_in_one_line():
    cfg = tiny_config()  # 4 x 8 x 8 latents
    with pytest.raises(UserError, match="expects inputs of 4 x 8 x 8 but the autoencoder's latents are 4 x 4 x 4"):
        match_parts(cfg, tiny_autoencoder(levels=4), tiny_clip())
    with pytest.raises(UserError, match="are 3 x 8 x 8"):
        match_parts(tiny_config(), tiny_autoencoder(latent=3), tiny_clip())
    with pytest.raises(UserError, match="width 16 .* text tower.s states have width 32"):
        match_parts(tiny_config(), tiny_autoencoder(), tiny_clip(width=32))
    ae, clip = tiny_autoencoder(), tiny_clip()
    filled = match_parts(UNetConfig(), ae, clip)  # unset values come from the parts
    assert (filled.in_channels, filled.image_size, filled.context_dim) == (4, 8, 16)
    assert match_parts(filled, ae, clip) is filled  # the parts it was trained with pass
    with pytest.raises(UserError, match="trained with another autoencoder .fingerprint") as e:
        match_parts(filled, tiny_autoencoder(), clip)  # the same latent shape, other weights
    assert "\n" not in str(e.value)
    ae.scale_factor *= 2  # recalibrated: another latent scale is another autoencoder
    with pytest.raises(UserError, match="another autoencoder"):
        match_parts(filled, ae, clip)
    with pytest.raises(UserError, match="trained with another CLIP model"):
        match_parts(replace(filled, autoencoder_fingerprint=None), tiny_autoencoder(), tiny_clip())


# ---- the trainer -------------------------------------------------------------------------------
def test_caption_dropout_replaces_a_tenth_of_the_captions_by_the_empty_one():
    from diffusion_lm.image.train import UNetBatches

    data = captioned_scenes(64)
    clip = tiny_clip()
    batches = UNetBatches(torch.zeros(64, 4, 8, 8), list(data["caption"]), clip, 100, 64, seed=0, caption_dropout=0.1)
    empty_states, empty_mask = clip.text_states([""])
    dropped = []
    for step in range(100):
        b = batches(step)
        dropped.append(b["dropped"])
        d = b["dropped"]
        assert torch.equal(b["context_mask"][d], empty_mask.expand(int(d.sum()), -1))  # ∅: [<bos> <eos>]
        assert torch.allclose(b["context"][d], empty_states.expand(int(d.sum()), -1, -1))
        assert (b["context_mask"][~d].sum(1) > 2).all()  # every other row keeps its caption
    rate = torch.cat(dropped).float().mean().item()
    assert abs(rate - 0.1) < 0.015, rate  # 6,400 draws: 0.1 ± 4 standard errors
    b1, b2 = batches(7), batches(7)
    assert all(torch.equal(b1[k], b2[k]) for k in b1)  # a batch is a function of its step
    none = UNetBatches(torch.zeros(64, 4, 8, 8), list(data["caption"]), clip, 100, 64, seed=0, caption_dropout=0.0)
    assert not any(none(s)["dropped"].any() for s in range(20))


def test_colour_dropout_shows_a_quarter_of_the_images_under_their_caption_less_one_colour():
    """colour_dropout: each variant is its caption with one colour word removed (still true of the image: the
    oracle reads the image as matching it), drawn in about p of the rows; the other draws are unchanged."""
    from diffusion_lm.image import oracle
    from diffusion_lm.image.data import as_arrays
    from diffusion_lm.image.shapes import COLOURS
    from diffusion_lm.image.train import UNetBatches, colour_variants

    data = captioned_scenes(64)
    captions = list(data["caption"])
    variants = colour_variants(captions, 0)
    for full, short in zip(captions, variants):
        words = full.split()
        gone = [w for w in words if w in COLOURS]
        assert len(short.split()) == len(words) - 1 and sum(w in COLOURS for w in short.split()) == len(gone) - 1
    images, _ = as_arrays(data)
    assert oracle.accuracy(images, variants)["caption"] == 1.0  # a left-out colour is free
    clip = tiny_clip()
    plain = UNetBatches(torch.zeros(64, 4, 8, 8), captions, clip, 100, 64, seed=0, caption_dropout=0.1)
    mixed = UNetBatches(torch.zeros(64, 4, 8, 8), captions, clip, 100, 64, seed=0, caption_dropout=0.1,
                        colour_dropout=0.25)
    shortened = []
    for step in range(60):
        a, b = plain(step), mixed(step)
        assert all(torch.equal(a[k], b[k]) for k in ("x0", "t", "noise", "dropped"))
        kept = a["context_mask"].sum(1) - b["context_mask"].sum(1)  # one token fewer where the variant is shown
        assert set(kept.tolist()) <= {0, 1} and not kept[a["dropped"]].any()
        shortened.append(kept[~a["dropped"]].float())
    rate = torch.cat(shortened).mean().item()
    assert abs(rate - 0.25) < 0.03, rate  # about 3,500 draws: 0.25 ± 4 standard errors
    with pytest.raises(UserError, match="colour_dropout"):
        from diffusion_lm.image.train import train_unet

        cfg, diffusion, train = unet_train_setup(Path("/nonexistent/never"), colour_dropout=1.0)
        train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=tiny_autoencoder(), clip=clip)


def unet_train_setup(tmp_path, space="latent", **train_kw):
    from diffusion_lm.image.train import UNetTrainConfig

    cfg = tiny_config(space, in_channels=None, image_size=None, context_dim=None,
                      attention_resolutions=[4] if space == "latent" else [16])
    train = UNetTrainConfig(**{**dict(out_dir=str(tmp_path), steps=6, batch_size=4, lr=1e-3, warmup=2, ema_decay=0.9,
                                      threads=1, log_every=1, checkpoint_every=2, device="cpu"), **train_kw})
    return cfg, DiffusionConfig("cosine", 50), train


def test_train_unet_resumes_exactly_after_a_kill(tmp_path, monkeypatch):
    from diffusion_lm.image.train import train_unet

    torch.manual_seed(0)
    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(24)

    def run(d):
        cfg, diffusion, train = unet_train_setup(tmp_path / d)
        return train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)

    a = run("a")
    assert a["steps"] == 6 and a["input"] == [4, 8, 8]
    restore = kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run("b")
    restore()
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 2
    b = run("b")
    assert b["steps"] == 6
    from safetensors.torch import load_file

    for f in ("checkpoint/state.safetensors", "model.safetensors"):
        sa, sb = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), f
    logs = [[{k: v for k, v in json.loads(r).items() if k != "elapsed_s"}
             for r in (tmp_path / d / "train_log.jsonl").read_text().splitlines()] for d in "ab"]
    assert logs[0] == logs[1] and len(logs[0]) == 6


def test_train_unet_refuses_a_mismatched_autoencoder(tmp_path):
    from diffusion_lm.image.train import train_unet

    cfg, diffusion, train = unet_train_setup(tmp_path / "a", steps=2)
    cfg.in_channels, cfg.image_size = 4, 8
    with pytest.raises(UserError, match="expects inputs of 4 x 8 x 8 but the autoencoder's latents are 8 x 8 x 8"):
        train_unet(cfg, diffusion, train, progress=False, dataset=captioned_scenes(8),
                   autoencoder=tiny_autoencoder(latent=8), clip=tiny_clip())
    assert not (tmp_path / "a").exists()
    # a resumed run with another autoencoder is refused too
    cfg, diffusion, train = unet_train_setup(tmp_path / "b", steps=2)
    train_unet(cfg, diffusion, train, progress=False, dataset=captioned_scenes(8), autoencoder=tiny_autoencoder(),
               clip=tiny_clip())
    cfg, diffusion, train = unet_train_setup(tmp_path / "b", steps=4)
    with pytest.raises(UserError, match="unet.in_channels"):
        train_unet(cfg, diffusion, train, progress=False, dataset=captioned_scenes(8),
                   autoencoder=tiny_autoencoder(latent=8), clip=tiny_clip())


# ---- the pipeline ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe():
    from diffusion_lm.pipelines.image import ImagePipeline

    torch.manual_seed(0)
    unet = perturbed(UNet(tiny_config()))
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    return ImagePipeline(unet, diffusion, tiny_clip(), tiny_autoencoder())


def direct(pipe, caption: str, n: int, steps: int, seed: int):
    """core.sample on the bare UNet with one caption's states: what w = 1 (or w = 0 with "") must equal."""
    states, mask = pipe.clip.text_states([caption])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 4, 8, 8), generator=g)
    z = sample(pipe.unet, pipe.diffusion.respace(steps), (n, 4, 8, 8), sampler="ddim",
               prediction=pipe.unet.config.prediction,
               noise=noise, generator=g, progress=False,
               model_kwargs={"context": states.expand(n, -1, -1), "context_mask": mask.expand(n, -1)})
    return pipe.autoencoder.decode(z)


def test_guidance_zero_is_the_unconditional_model_and_one_the_conditional(pipe):
    caption = "a small red circle at the top left"
    for w, as_caption in ((0, ""), (1, caption)):
        got = pipe.sample(caption, 3, guidance=w, steps=10, seed=4)
        assert torch.equal(got, direct(pipe, as_caption, 3, 10, 4)), w  # one pass of the half it is
    w4 = pipe.sample(caption, 3, guidance=4, steps=10, seed=4)
    assert not torch.allclose(w4, pipe.sample(caption, 3, guidance=1, steps=10, seed=4), atol=1e-4)
    images = pipe([caption, "a blue square"], 2, guidance=2, steps=5)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, pipe([caption, "a blue square"], 2, guidance=2, steps=5, batch_size=3))


def test_a_clip_with_lexical_states_conditions_the_same_way():
    """clip.lexical_states doubles the context (contextual states, then the words' own embeddings); the UNet's
    cross-attention takes any length, and w = 1 is still the conditional model on that context."""
    from diffusion_lm.pipelines.image import ImagePipeline

    torch.manual_seed(0)
    clip = tiny_clip()
    clip.config.lexical_states = True
    lexical = ImagePipeline(perturbed(UNet(tiny_config())), GaussianDiffusion.from_config(DiffusionConfig("cosine", 100)),
                            clip, tiny_autoencoder())
    caption = "a small red circle left of a large cyan square"
    assert lexical.clip.text_states([caption])[0].shape[1] == 2 * clip.config.max_len
    with_words = lexical.sample(caption, 2, guidance=1, steps=5, seed=1)
    assert torch.equal(with_words, direct(lexical, caption, 2, 5, 1))
    clip.config.lexical_states = False  # the same weights without the words' own tokens: another context
    assert not torch.allclose(lexical.sample(caption, 2, guidance=1, steps=5, seed=1), with_words, atol=1e-5)


def test_clip_shipped_is_the_shipped_clip_the_unet_was_trained_with(tmp_path, monkeypatch):
    import diffusion_lm.assets as assets
    from diffusion_lm.image.unet import fingerprint
    from diffusion_lm.pipelines.image import shipped_clip_for

    torch.manual_seed(0)
    a, b = tiny_clip(), tiny_clip()
    a.save_pretrained(tmp_path / "models" / "image-clip")
    b.save_pretrained(tmp_path / "models" / "image-clip-neg")
    monkeypatch.setattr(assets, "assets_dir", lambda: tmp_path)
    for clip, name in ((a, "a"), (b, "b")):
        unet = UNet(tiny_config(clip_fingerprint=fingerprint(clip)))
        assert fingerprint(shipped_clip_for(unet)) == fingerprint(clip), name
    for unknown in (None, "0123456789abcdef"):  # no match: image-clip (match_parts then names a mismatch)
        assert fingerprint(shipped_clip_for(UNet(tiny_config(clip_fingerprint=unknown)))) == fingerprint(a)


def test_select_keeps_each_images_best_candidate_by_clip(pipe):
    """select=K: image j is, of its K candidates (rows j, j + C·n, j + 2·C·n, … of the K·C·n draw), the one
    with the highest CLIP cosine to its caption, found here by brute force; candidate 0 is the select=1 image
    (same x_T, DDIM), so no image scores lower than without reranking; bad select is one line."""
    captions = ["a small red circle at the top left", "a blue square"]
    n, k = 2, 3
    images = len(captions) * n
    got = pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k)
    assert got.shape == (images, 3, 32, 32)
    per_row = [c for c in captions for _ in range(n)] * k
    candidates = pipe.sample(per_row, 1, guidance=2, steps=4, seed=3)
    plain = pipe.sample(captions, n, guidance=2, steps=4, seed=3)
    assert torch.allclose(candidates[:images], plain, atol=1e-5)  # one batch of 12 against one of 4
    text = pipe.clip.encode_text(captions)
    for j in range(images):
        group = candidates[j::images]
        cos = pipe.clip.encode_image(group.clamp(-1, 1)) @ text[j // n]
        assert torch.equal(got[j], group[int(cos.argmax())]), j
        assert float(cos.max()) >= float(cos[0])
    assert torch.equal(pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=1), plain)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="select"):
            pipe.sample(captions, n, steps=4, select=bad)
    # rerank=False: all K blocks, which `rerank` picks from later; that form shards (whole batches per rank)
    every = pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k, rerank=False)
    assert every.shape == (k * images, 3, 32, 32) and torch.allclose(every, candidates, atol=1e-5)
    assert torch.equal(pipe.rerank(every, captions, n, k), got)
    halves = [pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k, rerank=False, batch_size=4,
                          shard=(i, 2)) for i in range(2)]
    assert torch.allclose(torch.cat([halves[0][:4], halves[1][:4], halves[0][4:], halves[1][4:]]), every, atol=1e-5)
    with pytest.raises(UserError, match="select"):
        pipe.sample(captions, n, steps=4, select=2, shard=(0, 2))


def test_rerank_clip_picks_by_another_clip_pair(pipe):
    """pipe.reranker (rerank_clip=): the same candidates, image j kept by the other CLIP's cosine to its caption,
    while the conditioning (candidate 0 = the plain draw) is the pipeline's own CLIP."""
    captions = ["a small red circle left of a blue square", "a blue square"]
    n, k = 2, 3
    images = len(captions) * n
    torch.manual_seed(7)
    other = tiny_clip()
    candidates = pipe.sample([c for c in captions for _ in range(n)] * k, 1, guidance=2, steps=4, seed=3)
    try:
        pipe.reranker = [other.eval()]
        got = pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k)
    finally:
        pipe.reranker = None
    text = other.encode_text(captions)
    picks = []
    for j in range(images):
        group = candidates[j::images]
        cos = other.encode_image(group.clamp(-1, 1)) @ text[j // n]
        picks.append(int(cos.argmax()))
        assert torch.allclose(got[j], group[picks[-1]], atol=1e-5), j
    own = pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k)
    own_text = pipe.clip.encode_text(captions)
    own_picks = [int((pipe.clip.encode_image(candidates[j::images].clamp(-1, 1)) @ own_text[j // n]).argmax())
                 for j in range(images)]
    assert picks != own_picks or torch.equal(got, own)  # the two CLIPs disagree somewhere here (seeded)
    try:  # an ensemble ranks by the mean of its members' cosines
        pipe.reranker = [other, pipe.clip]
        both = pipe.sample(captions, n, guidance=2, steps=4, seed=3, select=k)
    finally:
        pipe.reranker = None
    for j in range(images):
        group = candidates[j::images].clamp(-1, 1)
        cos = (other.encode_image(group) @ text[j // n] + pipe.clip.encode_image(group) @ own_text[j // n]) / 2
        assert torch.allclose(both[j], candidates[j::images][int(cos.argmax())], atol=1e-5), j


def test_guidance_sampling_goes_through_classifier_free_guidance(pipe, monkeypatch):
    from diffusion_lm.pipelines import image as image_pipeline

    seen = []
    real = image_pipeline.sample

    def spy(model_fn, *a, **kw):
        seen.append((type(model_fn), kw["x0_transform"]))
        return real(model_fn, *a, **kw)

    monkeypatch.setattr(image_pipeline, "sample", spy)
    pipe.sample("a blue square", 1, guidance=3, steps=2, threshold="dynamic")
    assert seen[0][0] is ClassifierFreeGuidance and type(seen[0][1]).__name__ == "DynamicThreshold"


@pytest.mark.parametrize("w", [-1, -0.5, float("nan"), float("inf"), "4", True])
def test_bad_guidance_fails_in_one_line(pipe, w):
    with pytest.raises(UserError, match="guidance must be a finite number >= 0") as e:
        pipe("a blue square", 1, guidance=w, steps=2)
    assert "\n" not in str(e.value)


def test_bad_captions_fail_in_one_line(pipe):
    long = " ".join(["a red circle left of a blue square"] * 3)
    for caption, match in (("a golden circle", "'golden'"), ("a red", "expected a shape"), ("", "empty caption"),
                           ("   ", "empty caption"), (long, "more than the 18")):
        with pytest.raises(UserError, match=match) as e:
            pipe(caption, 1, steps=2)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="threshold"):
        pipe("a red circle", 1, steps=2, threshold="soft")


def test_trajectory_strip(pipe, tmp_path):
    from PIL import Image

    from diffusion_lm.pipelines.image import ImageTrajectory

    rec = ImageTrajectory(pipe, every=4)
    pipe("a red circle", 2, steps=10, callback=rec)
    ts = [t for t, _ in rec.frames]  # step indices 9 (the first), 8, 4 and 0, as training steps t = 100 ... 1
    assert len(ts) == 4 and ts[0] == 100 and ts[-1] == 1 and ts == sorted(ts, reverse=True)
    png = rec.write(tmp_path / "traj.png")
    assert Image.open(png).size[0] > 5 * 32


# ---- the metrics -------------------------------------------------------------------------------
def test_frechet_distance_matches_the_closed_form():
    from diffusion_lm.image.evaluate import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    # N(0, I) against N(m, 4 I): |m|² + 3 (1 + 4 − 2·2)
    b = 2 * torch.randn(4000, 3, generator=g, dtype=torch.float64) + torch.tensor([1.0, 0, 0], dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(1 + 3, rel=0.1)
    # diagonal covariances against a general one: agrees with Tr((Σa Σb)^½) by eigenvalues of the product
    c = torch.randn(4000, 3, generator=g, dtype=torch.float64) @ torch.tensor([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 2.0]],
                                                                               dtype=torch.float64)
    ca, cc = torch.cov(a.T), torch.cov(c.T)
    cross = torch.linalg.eigvals(ca @ cc).real.clamp_min(0).sqrt().sum()
    expect = ((a.mean(0) - c.mean(0)) ** 2).sum() + ca.trace() + cc.trace() - 2 * cross
    assert frechet_distance(a, c) == pytest.approx(float(expect), rel=1e-6)


# ---- end to end through the CLI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_parts(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny autoencoder and CLIP pair, trained for a few steps through their own commands."""
    from diffusion_lm.cli.main import run

    root = tmp_path_factory.mktemp("parts")
    assert run(["train-autoencoder", "autoencoder_preset=tiny", f"train.out_dir={root / 'autoencoder'}"]) == 0
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={root / 'clip'}"]) == 0
    return root / "autoencoder", root / "clip"


def one_line_error(capsys, argv):
    from diffusion_lm.cli.main import run

    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_tiny_train_then_imagine_then_evaluate_through_the_cli(tmp_path, capsys, trained_parts, space):
    from PIL import Image

    from diffusion_lm.cli.main import run

    ae, clip = trained_parts
    unet = tmp_path / "unet"
    parts = [f"autoencoder={ae}", f"clip={clip}"]
    assert run(["train-unet", "unet_preset=tiny", f"unet.space={space}", f"train.out_dir={unet}",
                f"train.autoencoder={ae}", f"train.clip={clip}", "train.train_size=32"]) == 0
    for f in ("config.json", "model.safetensors", "diffusion.json", "train_config.json", "train_log.jsonl",
              "loss_curve.png", "summary.json", "checkpoint/state.safetensors"):
        assert (unet / f).is_file(), f
    assert json.loads((unet / "config.json").read_text())["space"] == space
    capsys.readouterr()

    grid, traj = tmp_path / "imagine" / "grid.png", tmp_path / "imagine" / "traj.png"
    assert run(["imagine", "caption=a small red circle at the top left", "guidance=4", "n=3", "steps=4",
                f"unet={unet}", *parts, f"out={grid}", f"trajectory={traj}", "trajectory_every=2"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(grid), str(traj)] and Image.open(grid).size[0] >= 3 * 32 and traj.is_file()

    out = tmp_path / "eval"
    assert run(["evaluate-image", f"unet={unet}", *parts, "n=2", "limit=2", "real=12", "w=[0,4]", "compare_at=[4]",
                "steps=2", f"out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    # the first threshold swept over w, the others at compare_at; test and heldout captions each time
    settings = [("dynamic", 0), ("dynamic", 4), ("static", 4), ("none", 4)] if space == "pixel" else [("none", 0), ("none", 4)]
    assert [(r["split"], r["threshold"], r["guidance"]) for r in report["rows"]] == [
        (split, t, w) for t, w in settings for split in ("test", "heldout")]
    assert len(report["meta"]["captions"]["heldout"]) == 2 and set(report["real"]) == {"test", "heldout"}
    assert report["real"]["test"]["accuracy"]["caption"] > 0.9  # the oracle reads real scenes back
    row = report["rows"][0]
    assert {"caption", "colour", "shape"} <= set(row["accuracy"]) and 0 <= row["clip_score"] <= 100
    assert row["frechet"] >= 0 and 0 <= row["saturated"] <= 1 and 0 <= row["out_of_range"] <= 1
    assert (out / "sweep.png").is_file() and (out / "report.md").read_text().startswith("# Caption-to-image")
    assert all((out / r["grid"]).is_file() for r in report["rows"])
    if space == "latent":  # CLIP reranking through the CLI: recorded, and said in the report
        assert run(["evaluate-image", f"unet={unet}", *parts, "n=2", "limit=2", "real=12", "w=[4]", "select=2",
                    "steps=2", f"out_dir={tmp_path / 'eval2'}"]) == 0
        picked = json.loads((tmp_path / "eval2" / "report.json").read_text())
        assert picked["meta"]["select"] == 2
        assert "best of 2 candidates" in (tmp_path / "eval2" / "report.md").read_text()
        # one draw, two rows a split: its first candidate alone is the select=1 run's images (the w=4 rows above)
        assert [(r["split"], r["select"]) for r in picked["rows"]] == [("test", 1), ("heldout", 1), ("test", 2),
                                                                       ("heldout", 2)]
        for mine, plain in zip(picked["rows"][:2], report["rows"][2:]):
            assert mine["accuracy"] == plain["accuracy"] and mine["clip_score"] == pytest.approx(plain["clip_score"], abs=0.01)
        assert all((tmp_path / "eval2" / r["grid"]).is_file() for r in picked["rows"])
        assert run(["imagine", "caption=a blue square", "n=2", "steps=2", "select=2", f"unet={unet}", *parts,
                    f"out={tmp_path / 'sel.png'}"]) == 0 and (tmp_path / "sel.png").is_file()
        capsys.readouterr()
        assert "select must be at least 1" in one_line_error(capsys, ["evaluate-image", f"unet={unet}", "select=0"])
        assert run(["evaluate-image", f"unet={unet}", *parts, "n=2", "limit=2", "real=12", "w=[4]", "select=2",
                    f"rerank_clip={clip}", "splits=[test]", "steps=2", f"out_dir={tmp_path / 'eval3'}"]) == 0
        assert json.loads((tmp_path / "eval3" / "report.json").read_text())["meta"]["rerank_clip"] == [str(clip)]
        assert run(["imagine", "caption=a blue square", "n=2", "steps=2", "select=2", f"unet={unet}", *parts,
                    f"rerank_clip=[{clip},{clip}]", f"out={tmp_path / 'ens.png'}"]) == 0  # an ensemble of two
        capsys.readouterr()
        assert "rerank_clip must be a CLIP folder" in one_line_error(capsys, ["imagine", f"unet={unet}", *parts,
                                                                              "select=2", "rerank_clip=[]"])
        capsys.readouterr()
        assert "give select > 1" in one_line_error(capsys, ["evaluate-image", f"unet={unet}", *parts,
                                                            f"rerank_clip={clip}", f"out_dir={tmp_path / 'eval4'}"])
        assert "give select > 1" in one_line_error(capsys, ["imagine", f"unet={unet}", *parts, f"rerank_clip={clip}",
                                                            f"out={tmp_path / 'r.png'}"])
        assert not (tmp_path / "eval4").exists() and not (tmp_path / "r.png").exists()
    capsys.readouterr()

    assert "w must be a finite number >= 0" in one_line_error(capsys, ["imagine", "w=-1", f"unet={unet}"])
    assert "w must be a finite number >= 0" in one_line_error(capsys, ["imagine", "guidance=-1", f"unet={unet}"])
    assert "'golden'" in one_line_error(capsys, ["imagine", "caption=a golden circle", f"unet={unet}",
                                                              *parts, "steps=2", f"out={grid}"])
    # inpainting from PNGs: the kept pixels come back (pasted for latents), the mask's white box is redrawn
    from diffusion_lm.image.editing import make_edits

    e = make_edits(1, seed=2)
    Image.fromarray(e["images"][0]).save(tmp_path / "init.png")
    Image.fromarray(np.where(e["keep"][0], 0, 255).astype(np.uint8)).save(tmp_path / "mask.png")
    edited = tmp_path / "edit.png"
    assert run(["imagine", f"caption={e['captions'][0]}", "guidance=3", "n=2", "steps=3", f"unet={unet}", *parts,
                f"init={tmp_path / 'init.png'}", f"mask={tmp_path / 'mask.png'}", f"out={edited}"]) == 0
    capsys.readouterr()
    grid_pixels = np.asarray(Image.open(edited).convert("RGB"))
    assert grid_pixels.shape[1] >= 2 * 32
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "small.png")
    for extra, match in (([f"init={tmp_path / 'init.png'}"], "needs both init"),
                         ([f"init={tmp_path / 'init.png'}", f"mask={tmp_path / 'small.png'}"], "is 16 x 16"),
                         ([f"init={tmp_path / 'nope.png'}", f"mask={tmp_path / 'mask.png'}"], "init image not found"),
                         ([f"init={tmp_path / 'init.png'}", f"mask={tmp_path / 'mask.png'}", "paste=maybe"], "paste must")):
        assert match in one_line_error(capsys, ["imagine", f"unet={unet}", *parts, "steps=2", f"out={tmp_path / 'x.png'}",
                                                *extra])
    assert not (tmp_path / "x.png").exists()
    if space == "latent":
        other = tmp_path / "other-ae"
        tiny_autoencoder(latent=8).save_pretrained(other)
        assert "expects inputs of 4 x 8 x 8" in one_line_error(capsys, ["imagine", f"unet={unet}", f"autoencoder={other}",
                                                                        f"clip={clip}", "steps=2", f"out={grid}"])


def test_shipped_models_missing_is_one_line(capsys):
    from diffusion_lm.assets import assets_dir

    if (assets_dir() / "models" / "image-unet-latent").is_dir():
        pytest.skip("a latent UNet is shipped")
    assert "no shipped model named 'image-unet-latent'" in one_line_error(capsys, ["imagine"])


# ---- inpainting ---------------------------------------------------------------------------------
def test_edits_change_one_object_and_keep_the_rest():
    from diffusion_lm.image import oracle
    from diffusion_lm.image.editing import make_edits

    e = make_edits(12, seed=3)
    assert e["images"].shape == (12, 32, 32, 3) and e["keep"].shape == (12, 32, 32) and e["keep"].dtype == bool
    assert oracle.accuracy(e["images"], e["original_captions"])["caption"] == 1.0  # the originals are what they say
    for keep, new, old in zip(e["keep"], e["captions"], e["original_captions"]):
        assert new != old and 0.5 < keep.mean() < 1
        changed = [(a, b) for a, b in zip(new.split(), old.split()) if a != b]
        assert len(new.split()) == len(old.split()) and 1 <= len(changed) <= 2  # colour and shape of one object
    # aligned to 4 x 4 cells, each redrawn box is whole cells and holds the unaligned one
    e4 = make_edits(12, seed=3, align=4)
    assert e4["captions"] == e["captions"]
    for keep, keep4 in zip(e["keep"], e4["keep"]):
        cells = (~keep4).reshape(8, 4, 8, 4)
        assert (cells.all((1, 3)) == cells.any((1, 3))).all() and not (~keep & keep4).any()


def test_inpainting_keeps_pixels_exactly_in_pixel_space_and_latent_cells_in_latent_space(pipe, monkeypatch):
    from diffusion_lm.core import sampling
    from diffusion_lm.image.editing import make_edits
    from diffusion_lm.pipelines.image import ImagePipeline

    e = make_edits(3, seed=1)
    torch.manual_seed(0)
    pixel = ImagePipeline(perturbed(UNet(tiny_config("pixel", attention_resolutions=[16]))),
                          GaussianDiffusion.from_config(DiffusionConfig("cosine", 100)), tiny_clip())
    out = pixel.inpaint(e["images"], e["keep"], e["captions"], guidance=2, steps=5)
    got = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert (got[e["keep"]] == e["images"][e["keep"]]).all()
    assert not (got[~e["keep"]] == e["images"][~e["keep"]]).all()  # the box is redrawn
    # latent space: the sampler's result holds the encoded latents at every cell whose 4 x 4 patch is kept
    finals = []
    real = sampling.sample
    monkeypatch.setattr("diffusion_lm.pipelines.image.sample", lambda *a, **kw: finals.append(real(*a, **kw)) or finals[-1])
    pasted = pipe.inpaint(e["images"], e["keep"], e["captions"], guidance=2, steps=5, paste=True)
    z = pipe.autoencoder.encode(((torch.as_tensor(e["images"]).permute(0, 3, 1, 2).float()) / 127.5 - 1))
    cells = torch.as_tensor(e["keep"]).view(3, 8, 4, 8, 4).all(4).all(2)
    assert torch.equal(finals[0].permute(0, 2, 3, 1)[cells], z.permute(0, 2, 3, 1)[cells])
    assert torch.equal(pasted.permute(0, 2, 3, 1)[torch.as_tensor(e["keep"])],
                       (torch.as_tensor(e["images"]).float() / 127.5 - 1)[torch.as_tensor(e["keep"])])


def test_bad_inpainting_input_is_one_line(pipe):
    from diffusion_lm.image.editing import make_edits

    e = make_edits(2)
    cases = [(e["images"][0], e["keep"], "uint8 images of shape"), (e["images"], e["keep"].astype(np.uint8), "boolean"),
             (e["images"], e["keep"][:, :16], "keep mask must be"), (e["images"], np.ones((32, 32), bool), "keeps everything"),
             (e["images"], np.zeros((2, 32, 32), bool), "keeps nothing")]
    for images, keep, match in cases:
        with pytest.raises(UserError, match=match) as err:
            pipe.inpaint(images, keep, e["captions"], steps=2)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="3 captions for 2 images"):
        pipe.inpaint(e["images"], e["keep"], ["a red circle"] * 3, steps=2)


def test_train_unet_init_from_starts_at_the_given_weights_and_refuses_another_shape(tmp_path):
    """train.init_from: step 0 of the new run holds the given UNet's weights (a 1e-12 lr keeps them to float
    precision) with a fresh step count; a UNet of another width or process is one line, nothing written."""
    from diffusion_lm.image.train import train_unet

    torch.manual_seed(0)
    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(16)
    cfg, diffusion, train = unet_train_setup(tmp_path / "first", steps=2)
    train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    cfg, diffusion, train = unet_train_setup(tmp_path / "next", steps=2, lr=1e-12, warmup=0,
                                             init_from=str(tmp_path / "first"))
    assert train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)["steps"] == 2
    a, b = (UNet.from_pretrained(tmp_path / d).state_dict() for d in ("first", "next"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for kw, key in ((dict(channels=16), "unet.channels"), (dict(), "diffusion")):
        cfg, diffusion, train = unet_train_setup(tmp_path / "bad", steps=2, init_from=str(tmp_path / "first"))
        cfg = replace(cfg, **kw)
        if not kw:
            diffusion = DiffusionConfig("linear", 50)
        with pytest.raises(UserError, match=f"train.init_from.*{key}"):
            train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
        assert not (tmp_path / "bad").exists()
    cfg, diffusion, train = unet_train_setup(tmp_path / "bad", steps=2, init_from=str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="train.init_from"):
        train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    from diffusion_lm.image.unclip import write_conditioning  # a decoder of CLIP image embeddings is not a caption UNet

    write_conditioning(tmp_path / "first", "image_embedding", cfg.clip_fingerprint)
    cfg, diffusion, train = unet_train_setup(tmp_path / "bad", steps=2, init_from=str(tmp_path / "first"))
    with pytest.raises(UserError, match="train.init_from.*conditioned on image_embedding"):
        train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    assert not (tmp_path / "bad").exists()


def test_caption_layers_start_as_the_identity_and_can_be_added_to_a_trained_unet(tmp_path):
    """unet.text_layers: new caption layers leave the UNet's output unchanged (both residual branches end at
    zero), so train.init_from may grow them onto a UNet trained without; the layers mix the caption's tokens
    once trained (a token's state then depends on the others), and ignore padding."""
    from diffusion_lm.image.train import train_unet

    torch.manual_seed(0)
    base = perturbed(UNet(tiny_config()))
    grown = UNet(tiny_config(text_layers=2))
    missing, unexpected = grown.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("text.") for k in missing)
    x, t, ctx = torch.randn(3, 4, 8, 8), torch.tensor([1, 5, 9]), torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(grown(x, t, ctx, mask), base(x, t, ctx, mask))
        perturbed(grown.text, 0.2)
        out = grown.read_caption(ctx, mask)
        changed = ctx.clone()
        changed[0, 1] += torch.randn(16)  # another real token of row 0
        assert not torch.allclose(grown.read_caption(changed, mask)[0, 0], out[0, 0])
        changed = ctx.clone()
        changed[0, 4] += 100 * torch.randn(16)  # padding of row 0
        assert torch.allclose(grown.read_caption(changed, mask)[0, :3], out[0, :3], atol=1e-6)
    with pytest.raises(UserError, match="unet.text_layers"):
        UNet(tiny_config(text_layers=-1))
    with pytest.raises(UserError, match="unet.text_layers.*divisible"):
        UNet(tiny_config(text_layers=1, heads=3, channels=6, groups=3))

    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(16)
    cfg, diffusion, train = unet_train_setup(tmp_path / "first", steps=2)
    train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    cfg, diffusion, train = unet_train_setup(tmp_path / "next", steps=2, lr=1e-12, warmup=0,
                                             init_from=str(tmp_path / "first"))
    train_unet(replace(cfg, text_layers=1), diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    a, b = (UNet.from_pretrained(tmp_path / d) for d in ("first", "next"))
    assert b.config.text_layers == 1 and len(b.text) == 1
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    cfg, diffusion, train = unet_train_setup(tmp_path / "bad", steps=2, init_from=str(tmp_path / "next"))
    with pytest.raises(UserError, match="train.init_from.*unet.text_layers"):  # layers are never dropped
        train_unet(cfg, diffusion, train, progress=False, dataset=data, autoencoder=ae, clip=clip)
    assert not (tmp_path / "bad").exists()
