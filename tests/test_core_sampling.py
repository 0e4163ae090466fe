import pytest
import torch

from diffusion_lm.core import GaussianDiffusion, Known, get_betas, sample

SHAPES = [(3, 6, 4), (2, 3, 4, 4)]


def oracle(target):
    """A denoiser that always predicts the same x_0."""
    return lambda x, t: target.expand_as(x)


@pytest.fixture
def diffusion():
    return GaussianDiffusion(get_betas("sqrt", 100)).respace(20)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_perfect_denoiser_returns_x0(diffusion, shape, sampler):
    x0 = torch.randn(shape)
    out = sample(oracle(x0), diffusion, shape, sampler=sampler, progress=False)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_ddim_eta0_is_deterministic(diffusion, shape):
    model = lambda x, t: 0.5 * x + 0.01 * t.float().view(-1, *[1] * (len(shape) - 1))
    noise = torch.randn(shape)
    a = sample(model, diffusion, shape, sampler="ddim", eta=0.0, noise=noise, progress=False,
               generator=torch.Generator().manual_seed(1))
    b = sample(model, diffusion, shape, sampler="ddim", eta=0.0, noise=noise, progress=False,
               generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample(model, diffusion, shape, sampler="ddim", eta=1.0, noise=noise, progress=False,
               generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


def test_model_gets_training_timesteps(diffusion):
    seen = []
    sample(lambda x, t: (seen.append(t[0].item()), x)[1], diffusion, (1, 2), progress=False)
    assert seen == diffusion.timestep_map.flip(0).tolist()
    assert seen[0] == 99 and seen[-1] == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_hooks_are_called_and_used(diffusion, shape):
    calls = {"x0": 0, "step": 0, "cb": 0}

    def x0_transform(x0, t):
        calls["x0"] += 1
        return torch.zeros_like(x0)

    def step_hook(x_prev, *, x_t, mean, variance, t, index):
        calls["step"] += 1
        assert x_prev.shape == x_t.shape == mean.shape == variance.shape
        return x_prev + 1.0

    def callback(info):
        calls["cb"] += 1
        assert set(info) == {"index", "t", "x_t", "x0", "x_prev", "rows"}

    out = sample(lambda x, t: x, diffusion, shape, x0_transform=x0_transform, step_hook=step_hook,
                 callback=callback, progress=False)
    assert calls == {"x0": 20, "step": 20, "cb": 20}
    # The last step's mean is the (zeroed) x̂_0, so the hook's +1 is all that remains.
    torch.testing.assert_close(out, torch.ones(shape))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noised", [True, False])
def test_masked_replacement_keeps_known_positions(diffusion, shape, noised):
    known_values = torch.randn(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, 1] = True
    seen = []

    def model(x, t):
        if not noised:
            seen.append(torch.equal(x[mask], known_values[mask]))
        return torch.zeros_like(x)

    out = sample(model, diffusion, shape, known=Known(known_values, mask, noised=noised), progress=False)
    assert torch.equal(out[mask], known_values[mask])
    assert not torch.equal(out[~mask], known_values[~mask])
    if not noised:
        assert all(seen)


def test_bad_sampler_arguments(diffusion):
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, t: x, diffusion, (1, 2), sampler="euler", progress=False)
    with pytest.raises(ValueError, match="eta"):
        sample(lambda x, t: x, diffusion, (1, 2), sampler="ddim", eta=-1.0, progress=False)


def test_model_kwargs_reach_the_model(diffusion):
    cond = torch.randn(2, 3, 4, 4)
    seen = []

    def model(x, t, cond=None, label=None):
        seen.append((cond, label))
        return torch.zeros_like(x)

    sample(model, diffusion, (2, 3, 4, 4), model_kwargs={"cond": cond, "label": 7}, progress=False)
    assert len(seen) == 20 and all(c is cond and lab == 7 for c, lab in seen)
    sample(lambda x, t: x, diffusion, (2, 3), progress=False)  # and a model without keywords needs none


def test_sampler_registry_rejects_unknown_names_listing_the_choices(diffusion):
    from diffusion_lm.core import SAMPLERS, ddim_step, ddpm_step, get_sampler

    assert SAMPLERS == {"ddpm": ddpm_step, "ddim": ddim_step} and get_sampler("ddim") is ddim_step
    for bad in ("euler", "DDPM", None):
        with pytest.raises(ValueError, match="unknown sampler .*choose one of ddpm, ddim"):
            sample(lambda x, t: x, diffusion, (1, 2), sampler=bad, progress=False)


def test_ddim_step_with_eta_0_is_the_closed_form(diffusion):
    from diffusion_lm.core import ddim_step, ddpm_step, step_moments

    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([19, 7, 1])
    mean, var = ddim_step(diffusion, x0, xt, t, eta=0.0)
    ab = diffusion.alpha_bar[t].view(-1, 1, 1, 1)
    ab_prev = diffusion.alpha_bar_prev[t].view(-1, 1, 1, 1)
    eps = (xt.double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()  # ε̂ implied by x̂_0 at x_t
    want = ab_prev.sqrt() * x0.double() + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(mean.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(var, torch.zeros_like(xt))
    # step_moments is a lookup in the same registry
    for name, rule in (("ddpm", ddpm_step), ("ddim", ddim_step)):
        a = step_moments(diffusion, x0, xt, t, name, 0.5, "large")
        b = rule(diffusion, x0, xt, t, eta=0.5, variance="large")
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_repaint_resampling_takes_each_step_r_times_and_backs_up_by_one_forward_step(diffusion):
    shape = (2, 3, 4, 4)
    values, mask = torch.randn(shape), torch.zeros(shape, dtype=torch.bool)
    mask[:, :, :2] = True
    seen, inputs = [], []

    def model(x, t):
        seen.append(int(t[0]))
        inputs.append(x.clone())
        return torch.zeros_like(x)

    out = sample(model, diffusion, shape, known=Known(values, mask, resample=3), progress=False,
                 generator=torch.Generator().manual_seed(0))
    steps = diffusion.timestep_map.flip(0).tolist()
    assert seen == [s for s in steps[:-1] for _ in range(3)] + [steps[-1]]  # the last step is taken once
    assert torch.equal(out[mask], values[mask])
    assert not torch.equal(inputs[0], inputs[1])  # the second try starts from a fresh back-up step
    plain = sample(model, diffusion, shape, known=Known(values, mask), progress=False,
                   generator=torch.Generator().manual_seed(0))
    one = sample(model, diffusion, shape, known=Known(values, mask, resample=1), progress=False,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, plain)
    with pytest.raises(ValueError, match="resample"):
        sample(model, diffusion, shape, known=Known(values, mask, resample=0), progress=False)


def test_repaint_back_up_step_has_the_forward_moments():
    """Backing up from x_{t-1} = c (a constant) gives x_t ~ N(sqrt(1 - beta_t) c, beta_t): checked on the spread
    of the second try's input over many rows."""
    diffusion = GaussianDiffusion(get_betas("linear", 10))
    shape = (20000, 1)
    firsts = {}

    def model(x, t):  # an x0-model that makes x_{t-1} exactly 1 at the top step (DDIM eta 0 with x0 = x_t = 1)
        k = int(t[0])
        firsts.setdefault(k, []).append(x.clone())
        return torch.ones_like(x)

    known = Known(torch.zeros(shape), torch.zeros(shape, dtype=torch.bool), resample=2)
    sample(model, diffusion, shape, sampler="ddim", known=known, noise=torch.ones(shape), progress=False,
           generator=torch.Generator().manual_seed(0))
    beta = float(diffusion.betas[9])
    ab, ab_prev = float(diffusion.alpha_bar[9]), float(diffusion.alpha_bar[8])
    # first try at t = 9 from x = 1 with x0 = 1: DDIM eta 0 gives x_8 = sqrt(ab_prev) + sqrt(1 - ab_prev) eps
    eps = (1 - ab ** 0.5) / (1 - ab) ** 0.5
    x8 = ab_prev ** 0.5 + (1 - ab_prev) ** 0.5 * eps
    second = firsts[9][1]
    assert float(second.mean()) == pytest.approx((1 - beta) ** 0.5 * x8, abs=0.01)
    assert float(second.var()) == pytest.approx(beta, rel=0.05)
