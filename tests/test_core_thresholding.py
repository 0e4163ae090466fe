"""Imagen's dynamic thresholding and static clipping as x0-transforms, on (B, C, H, W) tensors."""
import pytest
import torch

from diffusion_lm.core import DynamicThreshold, GaussianDiffusion, StaticThreshold, get_betas, sample


def test_dynamic_threshold_by_hand():
    # sample 0: |x| sorted 0.5, 1, 2, 3; the median (p = 0.5, linear) is 1.5, so clip to ±1.5 and divide by 1.5
    # sample 1: every |x| is at most 0.8, so s = max(0.8, 1) = 1 and nothing changes
    x = torch.tensor([[[[0.5, -2.0], [3.0, 1.0]]],
                      [[[0.1, -0.8], [0.4, 0.0]]]])
    got = DynamicThreshold(quantile=0.5)(x)
    want = torch.tensor([[[[0.5 / 1.5, -1.0], [1.0, 1.0 / 1.5]]],
                         [[[0.1, -0.8], [0.4, 0.0]]]])
    torch.testing.assert_close(got, want)
    # p = 1 is the largest |x|: 3, no clipping, divide by 3
    torch.testing.assert_close(DynamicThreshold(quantile=1.0)(x)[0], x[0] / 3.0)


def test_dynamic_threshold_per_sample_percentile_and_range():
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(5, 3, 8, 8, generator=g)
    out = DynamicThreshold(0.995)(x)
    s = torch.quantile(x.abs().flatten(1), 0.995, dim=1).clamp_min(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, x.clamp(-s, s) / s)
    assert out.abs().max() <= 1.0 + 1e-6


def test_thresholds_leave_inputs_inside_the_range_unchanged():
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for transform in (DynamicThreshold(0.995), DynamicThreshold(0.5), StaticThreshold(1.0)):
        assert torch.equal(transform(x), x)
        assert torch.equal(transform(transform(x)), transform(x))


def test_static_clip_and_bad_arguments():
    x = torch.tensor([[[[-3.0, -0.5], [0.5, 2.0]]]])
    assert torch.equal(StaticThreshold()(x), torch.tensor([[[[-1.0, -0.5], [0.5, 1.0]]]]))
    assert torch.equal(StaticThreshold(0.25)(x), torch.tensor([[[[-0.25, -0.25], [0.25, 0.25]]]]))
    with pytest.raises(ValueError, match="quantile"):
        DynamicThreshold(0.0)
    with pytest.raises(ValueError, match="limit"):
        StaticThreshold(-1.0)


def test_threshold_as_the_samplers_x0_transform():
    diffusion = GaussianDiffusion(get_betas("cosine", 30)).respace(6)
    seen = []

    def transform(x0, t):
        out = DynamicThreshold(0.9)(x0, t)
        seen.append(out.abs().max().item())
        return out

    out = sample(lambda x, t: 5 * torch.ones_like(x), diffusion, (2, 3, 4, 4), x0_transform=transform,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert len(seen) == 6 and max(seen) <= 1.0 + 1e-6
    torch.testing.assert_close(out, torch.ones(2, 3, 4, 4))  # the last mean is the thresholded x̂_0
