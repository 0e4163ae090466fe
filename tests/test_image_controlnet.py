"""ControlNet: a zero-initialised branch equals the base model, trains on object masks, resumes, refuses another base."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import kill_at
from diffusion_lm.core import DiffusionConfig, GaussianDiffusion
from diffusion_lm.errors import UserError
from diffusion_lm.image.controlnet import ControlledUNet, ControlNet, ControlNetConfig, mask_iou, object_mask
from diffusion_lm.image.unet import UNet
from test_image_unet import captioned_scenes, perturbed, tiny_autoencoder, tiny_clip, tiny_config


def base_unet(space: str = "latent") -> UNet:
    torch.manual_seed(0)
    return perturbed(UNet(tiny_config(space, attention_resolutions=[16] if space == "pixel" else [4]))).eval()


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_a_fresh_controlnet_leaves_the_base_model_exactly_as_it_was(space):
    base = base_unet(space)
    controlled = ControlledUNet(base, ControlNet(base, ControlNetConfig(hint_width=8))).eval()
    c, s = base.config.in_channels, base.config.image_size
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, c, s, s, generator=g), torch.tensor([1, 40, 99])
    ctx, mask = torch.randn(3, 5, 16, generator=g), torch.ones(3, 5, dtype=torch.bool)
    hint = torch.from_numpy(object_mask(captioned_scenes(3).with_format("numpy")["image"]))
    with torch.no_grad():
        plain = base(x, t, ctx, mask)
        assert torch.equal(controlled(x, t, ctx, mask, control=hint), plain)
        residuals = controlled.controlnet(x, t, ctx, mask, hint)
    assert [r.shape[1] for r in residuals] == base.skip_widths() and all((r == 0).all() for r in residuals)
    # once the branch has weights, the hint changes the prediction, and control_scale = 0 is the base again
    perturbed(controlled.controlnet, 0.02)
    with torch.no_grad():
        assert not torch.allclose(controlled(x, t, ctx, mask, control=hint), plain, atol=1e-5)
        assert torch.equal(controlled(x, t, ctx, mask, control=hint, control_scale=0.0), plain)
    with pytest.raises(UserError, match=r"control map must be \(1, 32, 32\)"):
        controlled(x, t, ctx, mask, control=hint[:, :, :16])


def test_a_fresh_controlnet_samples_what_the_base_pipeline_samples():
    from diffusion_lm.pipelines.image import ImagePipeline

    base = base_unet()
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 100))
    clip, ae = tiny_clip(), tiny_autoencoder()
    plain = ImagePipeline(base, diffusion, clip, ae)
    steered = ImagePipeline(base, diffusion, clip, ae, controlnet=ControlNet(base, ControlNetConfig(hint_width=8)))
    hint = torch.zeros(1, 32, 32)
    hint[:, 4:12, 4:12] = 1
    caption = "a small red circle at the top left"
    assert torch.equal(steered.sample(caption, 2, guidance=3, steps=4, control=hint),
                       plain.sample(caption, 2, guidance=3, steps=4))
    for control, scale, match in ((torch.zeros(2, 16, 16), 1.0, "control map must be 1 x 32 x 32"),
                                  (hint, -1.0, "control_scale .control_strength. must be"), (torch.zeros(3, 1, 32, 32), 1.0, "one per image")):
        with pytest.raises(UserError, match=match):
            steered.sample(caption, 2, steps=2, control=control, control_scale=scale)
    with pytest.raises(UserError, match="needs a ControlNet"):
        plain.sample(caption, 1, steps=2, control=hint)


def test_mask_iou_and_object_masks():
    images = np.full((2, 32, 32, 3), 24, np.uint8)
    images[0, 2:6, 2:6] = (235, 30, 30)  # a red 4 x 4 square
    m = object_mask(images)
    assert m.shape == (2, 1, 32, 32) and m[0].sum() == 16 and m[1].sum() == 0
    control = np.zeros((2, 1, 32, 32), np.float32)
    control[0, 0, 2:6, 2:10] = 1  # twice as wide as the square
    assert mask_iou(images, control).tolist() == [0.5, 1.0]
    with pytest.raises(UserError, match="object masks"):
        object_mask(images[0])


def setup(tmp_path, **kw):
    from diffusion_lm.image.train import ControlNetTrainConfig

    train = ControlNetTrainConfig(**{**dict(out_dir=str(tmp_path), steps=6, batch_size=4, lr=1e-3, warmup=2,
                                            ema_decay=0.9, threads=1, log_every=1, checkpoint_every=2, device="cpu"), **kw})
    return ControlNetConfig(hint_width=8), train


def test_train_controlnet_keeps_the_base_frozen_and_resumes_exactly(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from diffusion_lm.image.train import train_controlnet

    base = base_unet()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    diffusion = GaussianDiffusion.from_config(DiffusionConfig("cosine", 50))
    ae, clip, data = tiny_autoencoder(), tiny_clip(), captioned_scenes(24)

    def run(d):
        cfg, train = setup(tmp_path / d)
        return train_controlnet(cfg, train, progress=False, dataset=data, unet=base, diffusion=diffusion,
                                autoencoder=ae, clip=clip)

    a = run("a")
    assert a["steps"] == 6 and a["parameters"] > 0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # the base never moves
    restore = kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run("b")
    restore()
    assert run("b")["steps"] == 6
    sa, sb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # the folder loads for its base, and is refused for another
    cn = ControlNet.from_pretrained(tmp_path / "a", base)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["base_fingerprint"] == cn.config.base_fingerprint
    other = perturbed(UNet(tiny_config(attention_resolutions=[4])), 0.1)
    with pytest.raises(UserError, match="trained for another UNet"):
        ControlNet.from_pretrained(tmp_path / "a", other)
    wider = UNet(tiny_config(channels=16, attention_resolutions=[4]))
    with pytest.raises(UserError, match="unet.channels"):
        ControlNet.from_pretrained(tmp_path / "a", wider)


def test_train_controlnet_then_imagine_with_a_control_map_through_the_cli(tmp_path, capsys):
    from PIL import Image

    from diffusion_lm.cli.main import run
    from test_image_unet import one_line_error

    root = tmp_path
    assert run(["train-autoencoder", "autoencoder_preset=tiny", f"train.out_dir={root / 'ae'}"]) == 0
    assert run(["train-clip", "clip_preset=tiny", f"train.out_dir={root / 'clip'}"]) == 0
    parts = [f"autoencoder={root / 'ae'}", f"clip={root / 'clip'}"]
    assert run(["train-unet", "unet_preset=tiny", f"train.out_dir={root / 'unet'}", f"train.autoencoder={root / 'ae'}",
                f"train.clip={root / 'clip'}", "train.train_size=32"]) == 0
    assert run(["train-controlnet", "controlnet_preset=tiny", f"train.out_dir={root / 'cn'}", f"train.unet={root / 'unet'}",
                f"train.autoencoder={root / 'ae'}", f"train.clip={root / 'clip'}", "train.train_size=16"]) == 0
    for f in ("config.json", "model.safetensors", "summary.json", "train_log.jsonl", "checkpoint/state.safetensors"):
        assert (root / "cn" / f).is_file(), f
    layout = np.zeros((32, 32), np.uint8)
    layout[3:10, 3:10] = 255
    Image.fromarray(layout).save(root / "layout.png")
    capsys.readouterr()
    out = root / "grid.png"
    common = ["imagine", "caption=a small red circle at the top left", "n=2", "steps=3", f"unet={root / 'unet'}", *parts]
    assert run([*common, f"controlnet={root / 'cn'}", f"control={root / 'layout.png'}", "control_strength=0.5",
                f"out={out}"]) == 0
    assert out.is_file()
    capsys.readouterr()
    bad = root / "bad.png"
    for extra, match in (([f"control={root / 'layout.png'}"], "needs both controlnet"),
                         ([f"controlnet={root / 'cn'}", f"control={root / 'layout.png'}", "control_strength=-2"],
                          "control_strength must be"),
                         ([f"controlnet={root / 'cn'}", f"control={root / 'ae' / 'config.json'}"], "not a readable image")):
        assert match in one_line_error(capsys, [*common, *extra, f"out={bad}"])
    assert not bad.exists()
