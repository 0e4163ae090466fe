"""Noisy CLIP and attribute classifiers steering image sampling through the core's step hook."""
from __future__ import annotations

import json

import pytest
import torch

from diffusion_lm.core import Control, DiffusionConfig, GaussianDiffusion, GuidanceConfig
from diffusion_lm.errors import UserError
from diffusion_lm.image.noisy import ATTRIBUTES, NoisyConfig, NoisyImageModel, attribute_index
from diffusion_lm.image.unet import UNet
from test_image_unet import captioned_scenes, perturbed, tiny_autoencoder, tiny_clip, tiny_config


def tiny_noisy(kind: str) -> NoisyImageModel:
    torch.manual_seed(0)
    return NoisyImageModel(NoisyConfig(kind=kind, in_channels=4, image_size=8, channels=8, groups=4,
                                       embed_dim=8 if kind == "clip" else None)).eval()


@pytest.fixture(scope="module")
def pipe():
    from diffusion_lm.pipelines.image import ImagePipeline

    torch.manual_seed(0)
    unet = perturbed(UNet(tiny_config()))
    return ImagePipeline(unet, GaussianDiffusion.from_config(DiffusionConfig("cosine", 100)), tiny_clip(),
                         tiny_autoencoder())


def test_log_prob_is_the_scaled_cosine_and_the_attribute_log_softmax_sum():
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0, 50, 99])
    clip = tiny_noisy("clip")
    target = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    with torch.no_grad():
        emb = clip(x, t)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3))
        assert torch.allclose(clip.log_prob(x, t, target), clip.logit_scale.exp() * (emb * target).sum(-1))
        attrs = tiny_noisy("attributes")
        logp = {k: torch.log_softmax(v, -1) for k, v in attrs.logits(x, t).items()}
        both = attrs.log_prob(x, t, {"colour": "red", "position": "top left"})
        want = logp["colour"][:, ATTRIBUTES["colour"].index("red")] + logp["position"][:, 0]
        assert torch.allclose(both, want)
        # composing by summing two controls is the one control naming both
        assert torch.allclose(attrs.log_prob(x, t, {"colour": "red"}) + attrs.log_prob(x, t, {"position": "top left"}), both)
        per_sample = attrs.log_prob(x, t, [{"shape": "circle"}, {"shape": "square"}, {"size": "large"}])
        assert per_sample.shape == (3,)
    for target, match in (({"colour": "golden"}, "unknown colour 'golden'"), ({"hue": "red"}, "unknown attribute"),
                          ({}, "non-empty mapping")):
        with pytest.raises(UserError, match=match):
            attribute_index([target])
    with pytest.raises(UserError, match="reads x_t of shape"):
        clip(torch.randn(1, 3, 32, 32), torch.tensor([1]))


def test_strength_zero_is_plain_sampling_and_a_control_moves_the_samples(pipe):
    caption = "a small red circle at the top left"
    control = [Control(tiny_noisy("attributes"), {"colour": "blue"})]
    plain = pipe.sample(caption, 2, guidance=2, steps=5, sampler="ddpm", seed=3)
    zero = pipe.sample(caption, 2, guidance=2, steps=5, sampler="ddpm", seed=3, controls=control,
                       control_config=GuidanceConfig(strength=0.0))
    assert torch.equal(plain, zero)
    steered = pipe.sample(caption, 2, guidance=2, steps=5, sampler="ddpm", seed=3, controls=control,
                          control_config=GuidanceConfig(strength=5.0, updates=2))
    assert not torch.allclose(steered, plain, atol=1e-4)
    # a CLIP control with one target row per image: each batch gets its own rows
    from diffusion_lm.pipelines.image import _rows

    targets = pipe.caption_embeddings([caption, "a blue square"], 2)
    assert targets.shape == (4, 8) and torch.equal(targets[0], targets[1]) and not torch.equal(targets[1], targets[2])
    assert torch.equal(_rows(targets, 3, 6, 4), targets[3:]) and _rows({"colour": "red"}, 0, 2, 4) == {"colour": "red"}
    kw = dict(guidance=2, steps=4, sampler="ddpm", seed=1, batch_size=3)
    guided = pipe.sample([caption, "a blue square"], 2, controls=[Control(tiny_noisy("clip"), targets)],
                         control_config=GuidanceConfig(strength=3.0), **kw)
    assert not torch.allclose(guided, pipe.sample([caption, "a blue square"], 2, **kw), atol=1e-4)
    with pytest.raises(UserError, match="stochastic step"):
        pipe.sample(caption, 1, steps=3, controls=control)
    # a classifier of another space, or of another autoencoder's latents, is refused in one line
    pixel = NoisyImageModel(NoisyConfig(kind="attributes", space="pixel", in_channels=3, image_size=32, channels=8,
                                        groups=4))
    with pytest.raises(UserError, match="reads pixel inputs of 3 x 32 x 32"):
        pipe.sample(caption, 1, steps=3, sampler="ddpm", controls=[Control(pixel, {"colour": "red"})])
    other = tiny_noisy("attributes")
    other.config.autoencoder_fingerprint = "0123456789abcdef"  # the UNet's is its tiny autoencoder's
    with pytest.raises(UserError, match="another autoencoder's latents"):
        pipe.sample(caption, 1, steps=3, sampler="ddpm", controls=[Control(other, {"colour": "red"})])


def test_train_both_kinds_then_resume(tmp_path):
    from diffusion_lm.image.train import NoisyTrainConfig, train_noisy

    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(48)
    for kind in ("clip", "attributes"):
        cfg = NoisyConfig(kind=kind, channels=8, groups=4)
        train = NoisyTrainConfig(out_dir=str(tmp_path / kind), steps=4, batch_size=8, warmup=1, threads=1,
                                 log_every=1, checkpoint_every=2, diffusion_steps=100, device="cpu")
        m = train_noisy(cfg, train, progress=False, dataset=data, autoencoder=ae, clip=clip, test=captioned_scenes(120, 1))
        assert m["steps"] == 4 and len(m["test_by_t"]) == 4
        model = NoisyImageModel.from_pretrained(tmp_path / kind)
        assert model.config.in_channels == 4 and model.config.kind == kind
        assert json.loads((tmp_path / kind / "manifest.json").read_text())["kind"] == f"image-noisy-{kind}"
        # a longer run resumes from the checkpoint; another config in the folder is refused
        train.steps = 6
        assert train_noisy(NoisyConfig(kind=kind, channels=8, groups=4), train, progress=False, dataset=data,
                           autoencoder=ae, clip=clip, test=captioned_scenes(120, 1))["steps"] == 6
        with pytest.raises(UserError, match="different classifier.channels"):
            train_noisy(NoisyConfig(kind=kind, channels=16, groups=4), train, progress=False, dataset=data,
                        autoencoder=ae, clip=clip)


def test_train_image_classifier_command_and_bad_input(tmp_path, capsys):
    from diffusion_lm.cli.main import run
    from test_image_unet import one_line_error

    assert run(["train-image-classifier", "image_classifier_preset=tiny", "classifier.kind=attributes",
                f"train.out_dir={tmp_path / 'a'}", "train.train_size=120"]) == 0
    capsys.readouterr()
    assert "classifier.kind must be clip or attributes" in one_line_error(
        capsys, ["train-image-classifier", "image_classifier_preset=tiny", "classifier.kind=colour",
                 f"train.out_dir={tmp_path / 'b'}"])
    assert not (tmp_path / "b").exists()
