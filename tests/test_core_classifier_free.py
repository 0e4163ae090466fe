"""Classifier-free guidance as a wrapper of the model function, on (B, C, H, W) tensors."""
import pytest
import torch

from diffusion_lm.core import ClassifierFreeGuidance, GaussianDiffusion, get_betas, sample

B, C, H, W = 3, 2, 4, 4


class CountingModel:
    """ε(x_t, t, c) = 0.5 x_t + 0.01 t + c · w_c, recording the batch of every call."""

    def __init__(self):
        self.calls = []
        self.weight = torch.linspace(-1, 1, C).view(1, C, 1, 1)

    def __call__(self, x, t, cond, scale_by=None):
        self.calls.append(x.shape[0])
        out = 0.5 * x + 0.01 * t.float().view(-1, 1, 1, 1) + cond * self.weight
        return out if scale_by is None else out * scale_by.view(-1, 1, 1, 1)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g)
    t = torch.tensor([5, 17, 42])
    cond = torch.randn(B, C, H, W, generator=g)
    return x, t, cond


def test_scale_0_is_unconditional_and_1_is_conditional(inputs):
    x, t, cond = inputs
    model = CountingModel()
    null = torch.zeros(1, C, H, W)
    uncond, conditional = model(x, t, null.expand_as(cond)), model(x, t, cond)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, {"cond": null})(x, t, cond=cond), uncond,
                               rtol=0, atol=0)
    model.calls.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, {"cond": null})(x, t, cond=cond), conditional,
                               rtol=0, atol=0)
    ClassifierFreeGuidance(model, 0.0, {"cond": null})(x, t, cond=cond)
    assert model.calls == [B, B]  # w = 0 and w = 1 run only the half they are: one pass of B rows each


@pytest.mark.parametrize("w", [-0.5, 2.0, 7.5])
def test_general_scale_is_the_closed_form_in_one_batched_call(inputs, w):
    x, t, cond = inputs
    model = CountingModel()
    null = torch.full((C, H, W), 0.3)  # a learned null embedding, broadcast over the batch
    uncond, conditional = model(x, t, null.expand_as(cond)), model(x, t, cond)
    model.calls.clear()
    got = ClassifierFreeGuidance(model, w, {"cond": null})(x, t, cond=cond)
    torch.testing.assert_close(got, uncond + w * (conditional - uncond))
    assert model.calls == [2 * B]  # conditional and unconditional halves in one forward


def test_other_keywords_are_repeated_for_both_halves(inputs):
    x, t, cond = inputs
    model = CountingModel()
    scale_by = torch.tensor([1.0, 2.0, 3.0])
    null = torch.zeros(1, C, H, W)
    got = ClassifierFreeGuidance(model, 3.0, {"cond": null})(x, t, cond=cond, scale_by=scale_by)
    u, c = model(x, t, null.expand_as(cond), scale_by), model(x, t, cond, scale_by)
    torch.testing.assert_close(got, u + 3.0 * (c - u))
    with pytest.raises(ValueError, match="cond"):
        ClassifierFreeGuidance(model, 3.0, {"cond": null})(x, t)


def test_the_sampler_calls_the_guided_model_with_model_kwargs(inputs):
    _, _, cond = inputs
    diffusion = GaussianDiffusion(get_betas("linear", 40)).respace(8)
    model = CountingModel()
    guided = ClassifierFreeGuidance(model, 4.0, {"cond": torch.zeros(1, C, H, W)})
    out = sample(guided, diffusion, (B, C, H, W), prediction="eps", model_kwargs={"cond": cond},
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == (B, C, H, W) and torch.isfinite(out).all()
    assert model.calls == [2 * B] * 8
