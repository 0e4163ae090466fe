"""The VQ autoencoder (codebook, straight-through gradients, code restarts, the optional discriminator) and
unCLIP (the prior over CLIP embeddings, the decoder conditioned on them, their pipeline and commands)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import kill_at
from diffusion_lm.core import DiffusionConfig, GaussianDiffusion
from diffusion_lm.errors import UserError
from diffusion_lm.image.autoencoder import (AutoencoderKL, AutoencoderVQ, PatchDiscriminator, VectorQuantizer,
                                            VQConfig, adversarial_terms, code_perplexity, load_autoencoder)
from diffusion_lm.image.unclip import (DiffusionPrior, PriorConfig, embedding_context, prior_loss, sample_prior)

TINY_VQ = dict(channels=8, channel_mult=[1, 1, 2], groups=4, codebook_size=16)


# ---- the quantizer ------------------------------------------------------------------------------
def test_codes_are_the_nearest_codebook_vectors_and_gradients_pass_straight_through():
    q = VectorQuantizer(10, 3)
    with torch.no_grad():
        q.codebook.weight.copy_(torch.randn(10, 3))
    h = torch.randn(2, 3, 4, 5, requires_grad=True)
    z_q, codes, codebook, commit = q(h)
    flat = h.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat, q.codebook.weight).argmin(1).view(2, 4, 5)
    assert torch.equal(codes, brute)
    assert torch.allclose(z_q, q.codebook.weight[codes].permute(0, 3, 1, 2))  # the forward value is the code
    g = torch.randn_like(h)
    (z_q * g).sum().backward()
    assert torch.equal(h.grad, g)  # straight through: d z_q / d h = I
    assert q.codebook.weight.grad is None  # the codebook learns from its own loss only
    e = q.codebook.weight[codes].permute(0, 3, 1, 2)
    assert codebook.item() == pytest.approx(float((e.detach() - h.detach()).pow(2).mean()), rel=1e-6)
    assert commit.item() == pytest.approx(codebook.item(), rel=1e-6)  # same value, gradients to other sides


def test_code_perplexity_matches_the_closed_form():
    assert code_perplexity(torch.arange(8), 8) == pytest.approx(8.0)
    assert code_perplexity(torch.zeros(50, dtype=torch.long), 8) == pytest.approx(1.0)
    codes = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    assert code_perplexity(codes, 4) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))


def test_dead_codes_restart_on_encoder_outputs():
    q = VectorQuantizer(6, 2)
    q.usage.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))
    h = torch.randn(1, 2, 3, 3)
    moved = q.restart_dead(h, torch.Generator().manual_seed(0))
    assert moved == 4
    flat = h.permute(0, 2, 3, 1).reshape(-1, 2)
    for k in range(2, 6):  # each restarted code is one of the encoder outputs
        assert (flat - q.codebook.weight[k]).abs().sum(1).min() == 0
    assert q.restart_dead(h, torch.Generator().manual_seed(0)) == 0  # their usage was reset


def test_vq_autoencoder_decode_snaps_to_codes_and_round_trips(tmp_path):
    ae = AutoencoderVQ(VQConfig(**TINY_VQ)).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ae.calibrate(x)
    z = ae.encode(x)
    assert z.shape == (3, 4, 8, 8) and float(z.std()) == pytest.approx(1.0, rel=1e-4)
    snapped = ae.decoder(ae.quantizer.lookup(ae.codes(x)))
    assert torch.allclose(ae.decode(z), snapped, atol=1e-6)
    assert torch.allclose(ae.decode(z + 1e-4), snapped, atol=1e-6)  # a small move stays on the same codes
    ae.save_pretrained(tmp_path / "vq")
    back = load_autoencoder(tmp_path / "vq")
    assert isinstance(back, AutoencoderVQ) and back.scale_factor == ae.scale_factor
    assert torch.equal(back.decode(z), ae.decode(z))
    with pytest.raises(UserError, match="unknown AutoencoderConfig keys"):
        AutoencoderKL.from_pretrained(tmp_path / "vq")
    with pytest.raises(UserError, match="codebook_size"):
        AutoencoderVQ(VQConfig(**{**TINY_VQ, "codebook_size": 1}))


def test_adversarial_terms_give_each_side_only_its_own_gradient():
    torch.manual_seed(0)
    ae = AutoencoderVQ(VQConfig(**TINY_VQ))
    disc = PatchDiscriminator()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon = ae(x)[0]
    gen, d = adversarial_terms(disc, x, recon)
    gen.backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters())  # the generator's term leaves the discriminator alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.decoder.parameters())
    ae.zero_grad(set_to_none=True)
    d.backward()
    assert all(p.grad is None for p in ae.parameters())  # the discriminator's hinge reads x̂ detached
    assert all(p.grad is not None for p in disc.parameters())


def test_train_vq_autoencoder_resumes_exactly_after_a_kill_with_the_discriminator(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from diffusion_lm.cli.main import run

    argv = ["train-autoencoder", "autoencoder_preset=vq_tiny", "train.disc_weight=0.1", "train.disc_start=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run([*argv, f"train.out_dir={a}"]) == 0
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["test"]["codebook"]["size"] == 16 and 1 <= metrics["test"]["codebook"]["perplexity"] <= 16
    assert json.loads((a / "manifest.json").read_text())["kind"] == "image-autoencoder-vq"
    assert {"gen", "disc", "perplexity"} <= set(json.loads((a / "train_log.jsonl").read_text().splitlines()[-1]))
    assert isinstance(load_autoencoder(a), AutoencoderVQ)
    restore = kill_at(monkeypatch, 4)
    assert run([*argv, f"train.out_dir={b}"]) == 130
    restore()
    assert run([*argv, f"train.out_dir={b}"]) == 0
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_vq_only_keys_are_refused_for_the_kl_autoencoder(capsys):
    from diffusion_lm.cli.main import run

    assert run(["train-autoencoder", "autoencoder_preset=tiny", "train.disc_weight=0.1"]) == 2
    assert "VQ autoencoder" in capsys.readouterr().err
    assert run(["train-autoencoder", "autoencoder_preset=vq_tiny", "train.restart_every=-1"]) == 2
    assert "restart_every" in capsys.readouterr().err


# ---- the prior -----------------------------------------------------------------------------------
def tiny_prior(dim: int = 8) -> DiffusionPrior:
    return DiffusionPrior(PriorConfig(embed_dim=dim, width=32, depth=2))


def test_the_prior_samples_unit_vectors_of_the_embedding_width():
    torch.manual_seed(0)
    prior = tiny_prior()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    out = sample_prior(prior, diffusion, text, guidance=2.0, steps=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 8)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    again = sample_prior(prior, diffusion, text, guidance=2.0, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(UserError, match=r"\(B, 8\)"):
        sample_prior(prior, diffusion, torch.zeros(2, 5))


def test_the_prior_learns_the_map_from_text_to_image_embeddings():
    """Two text embeddings, each paired with one image embedding: the trained prior's samples land on them."""
    torch.manual_seed(0)
    prior = tiny_prior(4)
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    text = torch.eye(4)[:2]
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]), dim=-1)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        rows = torch.randint(0, 2, (64,), generator=g)
        t = torch.randint(0, 100, (64,), generator=g)
        loss = prior_loss(prior, diffusion, image[rows], text[rows], t, torch.randn(64, 4, generator=g),
                          torch.zeros(64, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = sample_prior(prior, diffusion, text.repeat_interleave(4, 0), steps=20, generator=torch.Generator().manual_seed(1))
    cos = (out * image.repeat_interleave(4, 0)).sum(-1)
    assert cos.min() > 0.9, cos


def test_prior_loss_drops_the_text_to_zero():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t, text):
            seen.append(text)
            return x_t

    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 10))
    text = torch.nn.functional.normalize(torch.ones(3, 4), dim=-1)
    prior_loss(Spy(), diffusion, text, text, torch.zeros(3, dtype=torch.long), torch.zeros(3, 4),
               torch.tensor([True, False, True]))
    assert torch.equal(seen[0][0], torch.zeros(4)) and torch.equal(seen[0][2], torch.zeros(4))
    assert torch.allclose(seen[0][1], text[1] * 2)  # scaled by sqrt(D) = 2


def test_embedding_context_is_one_scaled_token():
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    states, mask = embedding_context(emb)
    assert states.shape == (3, 1, 16) and mask.shape == (3, 1) and bool(mask.all())
    assert torch.allclose(states[:, 0], emb * 4)


# ---- the decoder, the pipeline and the commands ---------------------------------------------------
@pytest.fixture(scope="module")
def unclip_parts(tmp_path_factory):
    """A tiny autoencoder and CLIP, and a prior and decoder trained on them for a few steps by the commands."""
    from diffusion_lm.cli.main import run

    root = tmp_path_factory.mktemp("unclip")
    ae, clip = root / "autoencoder", root / "clip"
    assert run(["train-autoencoder", "autoencoder_preset=tiny", f"train.out_dir={ae}"]) == 0
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={clip}"]) == 0
    parts = [f"train.autoencoder={ae}", f"train.clip={clip}"]
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={root / 'prior'}", f"train.clip={clip}"]) == 0
    assert run(["train-unet", "unet_preset=tiny", "train.condition=image_embedding", f"train.out_dir={root / 'decoder'}",
                "train.train_size=32", *parts]) == 0
    assert run(["train-unet", "unet_preset=tiny", f"train.out_dir={root / 'unet'}", "train.train_size=32", *parts]) == 0
    return root


def test_decoder_batches_hold_each_image_embedding_and_a_zero_null():
    from diffusion_lm.image.train import UNetBatches

    emb = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    batches = UNetBatches(torch.zeros(10, 4, 8, 8), [""] * 10, None, 100, 10, 0, 0.5, embeddings=emb)
    b = batches(0)
    rows = torch.tensor([torch.nonzero((emb * 2 - s[0]).abs().sum(1) < 1e-6).flatten()[0] if s.abs().sum() else -1
                         for s in b["context"]])
    assert b["context"].shape == (10, 1, 4)
    assert torch.equal(rows == -1, b["dropped"])  # the dropped rows get the zero token, the rest their own
    assert bool(b["context_mask"].all())


def test_unclip_pipeline_draws_from_captions_and_variations_deterministically(unclip_parts):
    from diffusion_lm.pipelines.unclip import UnCLIPPipeline

    root = unclip_parts
    pipe = UnCLIPPipeline.from_pretrained(root / "prior", root / "decoder", root / "autoencoder", root / "clip",
                                          device="cpu")
    kw = dict(guidance=2, steps=4, seed=3)
    a = pipe.sample(["a small red circle at the top left", "a blue square"], 2, prior_guidance=2, prior_steps=5, **kw)
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, pipe.sample(["a small red circle at the top left", "a blue square"], 2, prior_guidance=2,
                                      prior_steps=5, **kw))
    assert torch.allclose(a, pipe.sample(["a small red circle at the top left", "a blue square"], 2, prior_guidance=2,
                                         prior_steps=5, batch_size=3, **kw), atol=1e-5)  # batch-independent
    emb = pipe.image_embeddings(["a blue square"], 3, prior_steps=5)
    assert emb.shape == (3, pipe.prior.config.embed_dim) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    source = np.zeros((32, 32, 3), np.uint8)
    v = pipe.variations(source, 3, **kw)
    assert v.shape == (3, 3, 32, 32)
    with pytest.raises(UserError, match="uint8 images"):
        pipe.variations(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(UserError, match="prior_guidance"):
        pipe.sample("a blue square", prior_guidance=-1)
    no_prior = UnCLIPPipeline.from_pretrained(None, root / "decoder", root / "autoencoder", root / "clip", device="cpu")
    with pytest.raises(UserError, match="needs its prior"):
        no_prior.sample("a blue square")


def test_a_decoder_and_a_caption_unet_are_not_mistaken_for_each_other(unclip_parts):
    from diffusion_lm.pipelines.image import ImagePipeline
    from diffusion_lm.pipelines.unclip import UnCLIPPipeline

    root = unclip_parts
    with pytest.raises(UserError, match="unCLIP decoder"):
        ImagePipeline.from_pretrained(root / "decoder", root / "autoencoder", root / "clip", device="cpu")
    with pytest.raises(UserError, match="caption UNet, not an unCLIP decoder"):
        UnCLIPPipeline.from_pretrained(root / "prior", root / "unet", root / "autoencoder", root / "clip", device="cpu")
    with pytest.raises(UserError, match="use the CLIP model it was trained with"):  # trained on the tiny CLIP
        UnCLIPPipeline.from_pretrained(root / "prior", root / "decoder", root / "autoencoder", "shipped", device="cpu")
    pipe = UnCLIPPipeline.from_pretrained(root / "prior", root / "decoder", root / "autoencoder", root / "clip",
                                          device="cpu")
    pipe.prior.config.clip_fingerprint = "0" * 16
    with pytest.raises(UserError, match="another CLIP pair"):
        UnCLIPPipeline(pipe.prior, pipe.prior_diffusion, pipe.unet, pipe.diffusion, pipe.clip, pipe.autoencoder)


def test_imagine_through_unclip_and_its_bad_input(unclip_parts, tmp_path, capsys):
    from PIL import Image

    from diffusion_lm.cli.main import run

    root = unclip_parts
    parts = [f"autoencoder={root / 'autoencoder'}", f"clip={root / 'clip'}", "steps=3", "n=2"]
    grid = tmp_path / "grid.png"
    assert run(["imagine", "caption=a blue square", f"prior={root / 'prior'}", f"unet={root / 'decoder'}",
                "prior_w=2", f"out={grid}", *parts]) == 0
    assert Image.open(grid).size[0] > 0
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "scene.png")
    assert run(["imagine", f"variation={tmp_path / 'scene.png'}", f"unet={root / 'decoder'}", f"out={grid}",
                *parts]) == 0
    capsys.readouterr()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "small.png")
    for argv, message in (
            ([f"variation={tmp_path / 'small.png'}", f"unet={root / 'decoder'}"], "32 x 32"),
            ([f"prior={root / 'prior'}", f"unet={root / 'decoder'}", "prior_w=-1"], "prior_w"),
            ([f"prior={root / 'prior'}", f"unet={root / 'unet'}"], "not an unCLIP decoder"),
            ([f"unet={root / 'decoder'}"], "unCLIP decoder")):
        out = tmp_path / "never.png"
        assert run(["imagine", *argv, f"out={out}", *parts]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
        assert not out.exists()


def test_train_prior_resumes_exactly_after_a_kill(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from diffusion_lm.cli.main import run

    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={a}"]) == 0
    metrics = json.loads((a / "metrics.json").read_text())
    assert {"cos_sample_image", "sample_to_text_top1_among_100", "image_to_text_top1_among_100"} <= set(metrics["test"])
    restore = kill_at(monkeypatch, 4)
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={b}"]) == 130
    restore()
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={b}"]) == 0
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    capsys.readouterr()
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={b}", "prior.width=64"]) == 2
    assert "different prior.width" in capsys.readouterr().err
    assert run(["train-prior", "prior_preset=tiny", f"train.out_dir={tmp_path / 'c'}", "train.text_dropout=1"]) == 2
    assert "text_dropout" in capsys.readouterr().err
