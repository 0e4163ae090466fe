import math

import pytest
import torch

from diffusion_lm.core import SCHEDULES, GaussianDiffusion, get_betas


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 10, 2000])
def test_alpha_bar_monotone_in_unit_interval(name, T):
    d = GaussianDiffusion(get_betas(name, T))
    ab = d.alpha_bar
    assert ab.shape == (T,)
    assert ((ab > 0) & (ab < 1)).all()
    assert (ab[1:] < ab[:-1]).all()


def test_sqrt_schedule_closed_form():
    T, s = 2000, 1e-4
    ab = GaussianDiffusion(get_betas("sqrt", T)).alpha_bar
    t = torch.arange(1, T + 1, dtype=torch.float64)
    expected = 1 - torch.sqrt(t / T + s)
    # ᾱ(0) = 1 − sqrt(s) is folded into the first β, so compare ratios to step 1.
    ratio = ab / ab[0]
    torch.testing.assert_close(ratio[:-1], (expected / expected[0])[:-1], rtol=1e-9, atol=1e-12)
    assert ab[0] == pytest.approx((1 - math.sqrt(1 / T + s)) / (1 - math.sqrt(s)), rel=1e-9)


def test_cosine_schedule_closed_form():
    T, s = 1000, 0.008
    ab = GaussianDiffusion(get_betas("cosine", T)).alpha_bar
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    assert ab[499].item() == pytest.approx(f(500 / T) / f(0), rel=1e-9)


def test_unknown_schedule_and_bad_T():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_betas("quadratic", 10)
    with pytest.raises(ValueError, match="at least 1"):
        get_betas("sqrt", 0)
