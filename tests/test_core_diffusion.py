import pytest
import torch

from diffusion_lm.core import GaussianDiffusion, get_betas

SHAPES = [(4, 7, 16), (3, 2, 5, 5)]  # text latents (B, L, D) and images (B, C, H, W)


@pytest.fixture
def diffusion():
    return GaussianDiffusion(get_betas("sqrt", 50))


@pytest.mark.parametrize("shape", SHAPES)
def test_q_sample_closed_form(diffusion, shape):
    x0, noise = torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 50, (shape[0],))
    ab = diffusion.alpha_bar[t].float().view(-1, *[1] * (len(shape) - 1))
    expected = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expected)


def test_q_sample_moments(diffusion):
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 30)
    xt = diffusion.q_sample(x0, t)
    ab = diffusion.alpha_bar[30].item()
    assert xt.mean().item() == pytest.approx(ab**0.5 * 2.0, abs=0.03)
    assert xt.var().item() == pytest.approx(1 - ab, abs=0.03)


@pytest.mark.parametrize("shape", SHAPES)
def test_posterior_matches_gaussian_product(diffusion, shape):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precisions add, means weight."""
    x0, xt = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    i = 17
    t = torch.full((shape[0],), i)
    beta, ab_prev = diffusion.betas[i], diffusion.alpha_bar[i - 1]
    prec = (1 - beta) / beta + 1 / (1 - ab_prev)
    mean = ((1 - beta).sqrt() / beta * xt + ab_prev.sqrt() / (1 - ab_prev) * x0) / prec
    got_mean, got_var, _ = diffusion.q_posterior(x0, xt, t)
    torch.testing.assert_close(got_mean, mean)
    assert got_var.flatten()[0].item() == pytest.approx(1 / prec.item(), rel=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
def test_prediction_conversions_round_trip(diffusion, shape):
    x0, eps = torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 50, (shape[0],))
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.eps_from_x0(x0, xt, t), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diffusion.x0_from_eps(eps, xt, t), x0, rtol=1e-4, atol=1e-4)
    v = diffusion.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(diffusion.x0_from_v(v, xt, t), x0, rtol=1e-4, atol=1e-4)
    for kind, out in (("x0", x0), ("eps", eps), ("v", v)):
        torch.testing.assert_close(diffusion.predict_x0(out, xt, t, kind), x0, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction type"):
        diffusion.predict_x0(x0, xt, t, "score")


def test_respace_keeps_alpha_bar_at_kept_steps():
    full = GaussianDiffusion(get_betas("sqrt", 2000))
    for n in (200, 50, 1):
        sub = full.respace(n)
        assert sub.num_timesteps == n
        kept = sub.timestep_map
        torch.testing.assert_close(sub.alpha_bar, full.alpha_bar[kept])
        assert kept[-1] == 1999
    assert full.respace(2000) is full
    with pytest.raises(ValueError, match="sampling steps"):
        full.respace(2001)


def test_diffusion_config_saves_beside_a_model_and_loads_back(tmp_path):
    import json

    from diffusion_lm.core import DiffusionConfig, load_diffusion_config, save_diffusion_config

    cfg = DiffusionConfig(schedule="cosine", steps=30)
    path = save_diffusion_config(tmp_path, cfg)
    assert path.name == "diffusion.json" and json.loads(path.read_text()) == {"schedule": "cosine", "steps": 30}
    assert load_diffusion_config(tmp_path) == cfg
    loaded = GaussianDiffusion.from_pretrained(tmp_path)
    assert loaded.config == cfg and torch.equal(loaded.betas, get_betas("cosine", 30))
    loaded.save_pretrained(tmp_path / "again")
    assert load_diffusion_config(tmp_path / "again") == cfg
    with pytest.raises(ValueError, match="respaced"):
        loaded.respace(5).save_pretrained(tmp_path / "no")
    with pytest.raises(FileNotFoundError):
        load_diffusion_config(tmp_path / "nothing")
    for bad, msg in (({"schedule": "sqrt"}, "missing"), ({"schedule": "sqrt", "steps": 3, "eta": 0}, "unknown"),
                     ({"schedule": "quadratic", "steps": 3}, "unknown noise schedule"),
                     ({"schedule": "sqrt", "steps": 0}, "steps")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=msg):
            load_diffusion_config(tmp_path)
    with pytest.raises(TypeError):
        DiffusionConfig()  # no defaults in core: the modality chooses
