"""The base LM as a fluency potential (diffusion_lm.lm.potential) and the pipeline's lm_guidance / lm_rerank."""
import pytest
import torch

from diffusion_lm.assets import resolve_asset
from diffusion_lm.core.guidance import Control, ControlGuidance, GuidanceConfig
from diffusion_lm.errors import UserError
from diffusion_lm.lm import ARLM
from diffusion_lm.lm.potential import LMPotential
from diffusion_lm.pipelines.text import DiffusionLMPipeline
from diffusion_lm.text import SampleConfig

SENTENCE = "The Eagle is a pub near the river ."


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return DiffusionLMPipeline.from_pretrained(str(tiny_model), device="cpu")


def test_soft_words_are_the_posterior_over_words_given_x_t(pipe):
    pot = pipe.potential()
    E = pot.table
    t = torch.tensor([50])
    ab = float(pot.alpha_bar[50])
    x = (ab ** 0.5 * E[[5, 9, 5]] + 0.1 * torch.randn(3, E.shape[1])).unsqueeze(0)
    q = pot.soft_words(x, t)
    expect = torch.softmax(-torch.cdist(x[0], ab ** 0.5 * E) ** 2 / (2 * (1 - ab)), -1)  # the closed form
    assert torch.allclose(q[0], expect, atol=1e-5)
    assert torch.allclose(q.sum(-1), torch.ones(1, 3))


def test_potential_at_clean_words_is_the_lms_log_likelihood_of_the_sentence(pipe):
    """t = 0 and x = EMB(words): the soft words are the words, the potential is log p_LM(sentence)."""
    pot = pipe.potential()
    tok, L = pipe.tokenizer, pipe.model.config.max_len
    ids = tok.encode_batch([SENTENCE], L)[0]
    with torch.no_grad():
        got = pot.log_prob(pipe.model.embed(ids), torch.zeros(1, dtype=torch.long))
    lm = pot.lm
    n = len(tok.encode(SENTENCE))  # START, words, END
    lm_ids = pot.word_map[ids[:, :n]]  # the same words in the LM's vocabulary ([UNK] where it lacks one)
    with torch.no_grad():
        expect = -lm.token_nll(lm_ids, torch.ones_like(lm_ids, dtype=torch.bool)).sum()
    assert got.shape == (1,) and float(got) == pytest.approx(float(expect), rel=1e-4)
    # and the gradient reaches x (what the guidance hook needs)
    x = pipe.model.embed(ids).detach().requires_grad_(True)
    pot.log_prob(x, torch.full((1,), 30)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_control_outside_its_timesteps_leaves_the_step_alone():
    class Toward:
        def log_prob(self, x, t, target):
            return -((x - target) ** 2).flatten(1).sum(1)

    x, mean, var = torch.randn(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    hook = ControlGuidance([Control(Toward(), torch.ones(1, 3, 2), t_range=(10, 20))], GuidanceConfig(strength=1.0))
    assert torch.equal(hook(x, x_t=x, mean=mean, variance=var, t=torch.tensor([25]), index=5), x)
    assert not torch.equal(hook(x, x_t=x, mean=mean, variance=var, t=torch.tensor([15]), index=5), x)


def test_lm_guidance_zero_is_plain_sampling_and_a_weight_changes_the_draw(pipe):
    cfg = SampleConfig(steps=4)
    plain = pipe.sample(n=3, seed=1, sample=cfg, progress=False)
    assert pipe.sample(n=3, seed=1, sample=cfg, lm_guidance=0.0, progress=False) == plain
    guided = pipe.sample(n=3, seed=1, sample=cfg, lm_guidance=50.0, progress=False)
    assert len(guided) == 3 and guided != plain


def test_lm_rerank_keeps_the_draw_the_base_lm_scores_best(pipe):
    cfg = SampleConfig(steps=4)
    draws = [pipe.sample(n=4, seed=3 + 100003 * k, sample=cfg, progress=False) for k in range(3)]
    picked = pipe.sample(n=4, seed=3, sample=cfg, select=3, lm_rerank=1.0, progress=False)
    lm = ARLM.load(resolve_asset("shipped", "model", "base-lm"))
    for row, text in enumerate(picked):
        options = [d[row] for d in draws]
        assert text in options
        assert lm.perplexity([text])[0] == pytest.approx(min(lm.perplexity(options)))


@pytest.mark.parametrize("kwargs,message", [
    ({"lm_guidance": -1.0}, "lm_guidance must be a finite number >= 0"),
    ({"lm_guidance": float("nan")}, "lm_guidance must be a finite number >= 0"),
    ({"lm_rerank": True}, "lm_rerank must be a finite number >= 0"),
    ({"select": 2}, "needs lm_rerank > 0"),
    ({"mbr": 2, "lm_guidance": 1.0}, "does not combine"),
])
def test_bad_fluency_settings_fail_in_one_line(pipe, kwargs, message):
    with pytest.raises(UserError, match=message) as e:
        pipe.sample(n=2, sample=SampleConfig(steps=2), progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_the_teacher_is_refused_as_the_fluency_lm_and_bad_timesteps_fail(tiny_model, tmp_path, capsys):
    from diffusion_lm.cli.main import run

    out = tmp_path / "s.jsonl"
    assert run(["sample", f"checkpoint={tiny_model}", "n=2", "sample.steps=2", "lm_guidance=1",
                "fluency_lm=shipped:teacher-lm", f"output={out}"]) == 2
    assert "must not be the teacher" in capsys.readouterr().err and not out.exists()
    assert run(["generate", f"checkpoint={tiny_model}", "task=length", "target=8", "sample.steps=2",
                "lm_guidance=1", "lm_guidance_t=[5,2]", f"output={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lm_guidance_t must be [lo, hi]" in err[0] and not out.exists()


def test_lm_guidance_weighs_the_same_in_the_objective_with_or_without_classifiers(pipe):
    """λ multiplies the classifiers' terms; the LM's term weighs lm_guidance either way."""
    clf = Control(object(), None)
    for strength in (50.0, 0.0):
        steer = pipe._fluency(ControlGuidance([clf], GuidanceConfig(strength=strength)), 2.0, None)
        lm = steer.controls[-1]
        assert lm.classifier is pipe.potential()
        assert (steer.config.strength or 1.0) * lm.weight == pytest.approx(2.0)
    alone = pipe._fluency(None, 2.0, GuidanceConfig(updates=5))
    assert alone.config.strength == 1.0 and alone.controls[0].weight == 2.0 and alone.config.updates == 5
    assert pipe._fluency(None, 0.0, None) is None


def test_early_exit_veto_checks_the_controls_not_the_fluency_term(pipe):
    from diffusion_lm.pipelines.text import _controls_met

    class Met:
        def log_prob(self, x, t, target):
            return torch.zeros(len(x))  # log p = 0: met

    x0 = torch.zeros(2, 4, pipe.model.config.emb_dim)
    steer = pipe._fluency(ControlGuidance([Control(Met(), None)], GuidanceConfig(strength=50.0)), 1.0, None)
    assert not steer.controls[-1].required  # the LM's term; its log-likelihood (< 0) would fail any floor
    assert _controls_met(x0, steer, floor=-1e-3).all()
