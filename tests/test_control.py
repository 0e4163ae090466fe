"""Control plumbing: the guidance hook against a closed-form classifier, and hard constraints."""
import json

import pytest
import torch

from diffusion_lm.core.guidance import Control, ControlGuidance, GuidanceConfig
from diffusion_lm.cli.main import run
from diffusion_lm.core import GaussianDiffusion, get_betas, sample
from diffusion_lm.errors import UserError
from diffusion_lm.text import from_pretrained
from diffusion_lm.text.constraints import infill_constraint, length_constraint, words_only
from diffusion_lm.text.generation import SampleConfig, sample_latents


class Toward:
    """log p(c | x) = −‖x − c‖²: guidance should pull x toward the target c."""

    def log_prob(self, x, t, target):
        return -((x - target) ** 2).flatten(1).sum(1)


def test_guidance_moves_toward_target_and_keeps_gaussian_term():
    mean = torch.zeros(2, 4, 3)
    var = torch.full_like(mean, 0.5)
    x = torch.randn(2, 4, 3)
    target = torch.ones(2, 4, 3)
    hook = ControlGuidance([Control(Toward(), target)], GuidanceConfig(strength=1.0, updates=20, step_size=0.1))
    out = hook(x, x_t=x, mean=mean, variance=var, t=torch.tensor([5, 5]), index=5)
    # the minimiser of ‖x−1‖² + ‖x‖²/(2·0.5) is x = 1/2: every coordinate moves toward it
    assert ((out - 0.5).abs() < (x - 0.5).abs()).all()
    assert hook.last_log_prob.shape == (2,)


def test_guidance_is_identity_without_strength_or_on_skipped_steps():
    x, mean, var = torch.randn(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    off = ControlGuidance([Control(Toward(), torch.ones(1, 3, 2))], GuidanceConfig(strength=0.0))
    assert torch.equal(off(x, x_t=x, mean=mean, variance=var, t=torch.tensor([1]), index=3), x)
    late = ControlGuidance([Control(Toward(), torch.ones(1, 3, 2))], GuidanceConfig(skip_last=2))
    assert torch.equal(late(x, x_t=x, mean=mean, variance=var, t=torch.tensor([1]), index=1), x)
    thin = ControlGuidance([Control(Toward(), torch.ones(1, 3, 2))], GuidanceConfig(every=3))
    moved = [not torch.equal(thin(x, x_t=x, mean=mean, variance=var, t=torch.tensor([1]), index=i), x)
             for i in range(1, 8)]
    assert moved == [False, False, True, False, False, True, False]  # one step in 3, counted from the end


def test_controls_compose_by_summing():
    x = torch.randn(2, 3, 2)
    a, b = torch.ones(2, 3, 2), -torch.ones(2, 3, 2)
    both = ControlGuidance([Control(Toward(), a, 1.0), Control(Toward(), b, 0.5)])
    expect = Toward().log_prob(x, None, a) + 0.5 * Toward().log_prob(x, None, b)
    assert torch.allclose(both.log_prob(x, None), expect)


def test_guided_sampling_runs_through_the_core_loop():
    diffusion = GaussianDiffusion(get_betas("sqrt", 50)).respace(10)
    target = torch.full((2, 5, 4), 2.0)
    hook = ControlGuidance([Control(Toward(), target)], GuidanceConfig(strength=5.0, updates=3, step_size=0.2))
    plain = sample(lambda x, t: x, diffusion, (2, 5, 4), generator=torch.Generator().manual_seed(0),
                   progress=False)
    guided = sample(lambda x, t: x, diffusion, (2, 5, 4), step_hook=hook,
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert (guided - target).norm() < (plain - target).norm()


def test_length_constraint_fixes_start_end_and_pads(tiny_model):
    model, tok, diffusion = from_pretrained(tiny_model)
    known = length_constraint(model, tok, [3, 7])
    exclude = words_only(known, tok, len(tok))
    x0 = sample_latents(model, diffusion, 2, SampleConfig(steps=5), known=known, exclude=exclude,
                        generator=torch.Generator().manual_seed(0), progress=False)
    ids = model.round(x0, exclude)
    for b, n in enumerate([3, 7]):
        assert ids[b, 0] == tok.start_id and ids[b, n + 1] == tok.end_id
        assert (ids[b, n + 2:] == tok.pad_id).all()
        specials = {tok.pad_id, tok.start_id, tok.end_id}
        assert not specials & set(ids[b, 1:n + 1].tolist())  # free positions are words
        assert len(tok.decode(ids[b]).split()) == n
    with pytest.raises(UserError, match="out of range"):
        length_constraint(model, tok, [model.config.max_len])


def test_infill_holds_context_words(tiny_model):
    model, tok, diffusion = from_pretrained(tiny_model)
    known = infill_constraint(model, tok, "The Eagle", "pub .", 3, 2)
    x0 = sample_latents(model, diffusion, 2, SampleConfig(steps=5), known=known, generator=torch.Generator().manual_seed(0),
                        progress=False)
    words = [tok.decode(r).split() for r in model.round(x0)]
    for w in words:
        assert w[:2] == ["The", "Eagle"]
    with pytest.raises(UserError, match="not in the model's vocabulary"):
        infill_constraint(model, tok, "Zyxwv", "", 3, 1)


def test_generate_cli_writes_rows_evaluate_reads(tiny_model, tmp_path, capsys):
    out = tmp_path / "len.jsonl"
    assert run(["generate", f"checkpoint={tiny_model}", "task=length", "length_shape=false", "target=6", "n=2",
                "sample.steps=5", f"output={out}"]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["task"] == "length" and r["target"] == 6 for r in rows)
    assert all(len(r["text"].split()) == 6 for r in rows)
    capsys.readouterr()
    for argv, msg in [(["target=0"], "out of range"), (["target=99"], "out of range"), (["target=x"], "not an integer"),
                      (["task=bogus", "target=DT"], "unknown task"), (["target=3", "targets=shipped"], "exactly one"),
                      (["targets=/no/file.jsonl"], "not found")]:
        code = run(["generate", f"checkpoint={tiny_model}", "task=length", "length_shape=false", "sample.steps=5", *argv])
        err = capsys.readouterr().err.strip()
        assert code == 2 and msg in err and len(err.splitlines()) == 1, (argv, err)


class _Counting:
    """x̂_0 = the rows' fixed points (a quantised prediction that settles at once); counts the rows it sees."""

    def __init__(self, values):
        self.values, self.rows_seen = values, []

    def __call__(self, x, t, row_ids):
        self.rows_seen.append(len(x))
        return self.values[row_ids]


def test_early_exit_returns_the_settled_x0_and_drops_rows_from_the_batch():
    from diffusion_lm.core.sampling import EarlyExit

    diffusion = GaussianDiffusion(get_betas("sqrt", 40)).respace(20)
    values = torch.arange(3.0)[:, None, None].expand(3, 2, 2).contiguous()
    model = _Counting(values)
    kwargs = {"row_ids": torch.arange(3)}  # narrowed with the batch: each running row keeps its own id
    veto = lambda x0, hook: x0[:, 0, 0] != 1.0  # row 1 may never stop early
    out = sample(model, diffusion, (3, 2, 2), early_exit=EarlyExit(2, veto), model_kwargs=kwargs,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out[[0, 2]], values[[0, 2]])  # stopped rows return their settled x̂_0 exactly
    assert torch.allclose(out[1], values[1], atol=1e-4)  # the vetoed row ran to the end (x_0 = the posterior mean)
    assert model.rows_seen[:3] == [3, 3, 3] and model.rows_seen[3:] == [1] * 17  # settled after 2 unchanged steps
    with pytest.raises(ValueError, match="patience"):
        sample(model, diffusion, (3, 2, 2), early_exit=EarlyExit(0), model_kwargs=kwargs, progress=False)


def test_a_vetoed_row_stops_once_its_x0_has_stayed_the_same_for_the_veto_limit():
    from diffusion_lm.core.sampling import EarlyExit

    diffusion = GaussianDiffusion(get_betas("sqrt", 40)).respace(20)
    values = torch.arange(3.0)[:, None, None].expand(3, 2, 2).contiguous()
    model = _Counting(values)
    veto = lambda x0, hook: x0[:, 0, 0] != 1.0  # row 1 is never accepted
    out = sample(model, diffusion, (3, 2, 2), early_exit=EarlyExit(2, veto, veto_limit=4),
                 model_kwargs={"row_ids": torch.arange(3)}, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out, values)  # every row returns its settled x̂_0, the vetoed one too
    assert model.rows_seen == [3, 3, 3, 1, 1]  # row 1 unchanged for 4 steps: out, 15 steps early
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="veto_limit"):
            sample(model, diffusion, (3, 2, 2), early_exit=EarlyExit(2, veto, veto_limit=bad),
                   model_kwargs={"row_ids": torch.arange(3)}, progress=False)


@pytest.mark.parametrize("steps", [100, 20, 5])
def test_fewer_steps_and_early_exit_still_hold_lengths_and_infill_contexts(tiny_model, steps):
    model, tok, diffusion = from_pretrained(tiny_model)
    cfg = SampleConfig(steps=steps, exit_patience=1)
    known = length_constraint(model, tok, [3, 5, 8])
    exclude = words_only(known, tok, len(tok))
    ids = model.round(sample_latents(model, diffusion, 3, cfg, known=known, exclude=exclude,
                                     generator=torch.Generator().manual_seed(0), progress=False), exclude)
    for b, n in enumerate([3, 5, 8]):
        assert ids[b, 0] == tok.start_id and ids[b, n + 1] == tok.end_id and (ids[b, n + 2:] == tok.pad_id).all()
        assert len(tok.decode(ids[b]).split()) == n
    known = infill_constraint(model, tok, "The Eagle", "pub .", 3, 2)
    x0 = sample_latents(model, diffusion, 2, cfg, known=known, generator=torch.Generator().manual_seed(0),
                        progress=False)
    for row in model.round(x0):
        words = tok.decode(row).split()
        assert words[:2] == ["The", "Eagle"] and words[5:7] == ["pub", "."]


def test_early_exit_settings_fail_cleanly(tiny_model):
    model, tok, diffusion = from_pretrained(tiny_model)
    for bad, msg in [({"exit_patience": -1}, "exit_patience"), ({"exit_patience": 1.5}, "exit_patience"),
                     ({"exit_confidence": 2.0}, "exit_confidence"), ({"exit_met": 1.5}, "exit_met"),
                     ({"exit_met": "yes"}, "exit_met"),
                     ({"exit_patience": 10, "exit_met_patience": 5}, "exit_met_patience"),
                     ({"exit_met_patience": 2.5}, "exit_met_patience")]:
        with pytest.raises(UserError, match=msg):
            sample_latents(model, diffusion, 1, SampleConfig(steps=5, **bad), progress=False)


def test_pad_margin_samples_only_the_batchs_longest_sentence_and_still_holds_lengths(tiny_model):
    from diffusion_lm.pipelines import DiffusionLMPipeline

    pipe = DiffusionLMPipeline.from_pretrained(str(tiny_model), device="cpu")
    L = pipe.model.config.max_len
    for margin, want in [(0, 8 + 2), (3, 8 + 2 + 3), (L, L)]:
        seen = []
        texts = pipe("length", targets=[3, 8], length_shape=False, progress=False,
                     sample=SampleConfig(steps=5, exit_patience=1, pad_margin=margin),
                     callback=lambda d: seen.append(d["x_t"].shape[1]))
        assert [len(t.split()) for t in texts] == [3, 8]  # the held lengths are exact in the shorter sequence
        assert set(seen) == {min(want, L)}
    seen = []
    texts = pipe("infill", left="The Eagle", right="pub .", middle=3, n=2, progress=False,
                 sample=SampleConfig(steps=5, pad_margin=1), callback=lambda d: seen.append(d["x_t"].shape[1]))
    assert set(seen) == {1 + 2 + 3 + 2 + 1 + 1} and all(t.split()[:2] == ["The", "Eagle"] for t in texts)
    for bad in (-1, 1.5, L + 1):
        with pytest.raises(UserError, match="pad_margin"):
            sample_latents(pipe.model, pipe.diffusion, 1, SampleConfig(steps=5, pad_margin=bad), progress=False)


def test_exit_met_checks_the_required_controls_that_can_check_words():
    from diffusion_lm.core.guidance import Control, ControlGuidance

    class Check:
        def __init__(self, ok):
            self.ok = torch.tensor(ok)

        def satisfied(self, x0, target):
            return self.ok[:len(x0)]

    class NoCheck:  # a classifier without a check (POS, the tree CRF): never vetoes
        pass

    x0 = torch.zeros(3, 4, 2)
    hook = ControlGuidance([Control(Check([True, True, False]), None), Control(NoCheck(), None),
                            Control(Check([False] * 3), None, required=False)])  # a shape steer: not required
    assert hook.met(x0).tolist() == [True, True, False]
    both = ControlGuidance([Control(Check([True, True, False]), None), Control(Check([True, False, True]), None)])
    assert both.met(x0).tolist() == [True, False, False]  # every control must hold


def test_shape_steers_are_not_required_controls(tiny_model):
    from classifiers.tasks import controls_for, parse_request

    class Pos:
        def length_row(self, n, g):
            return torch.full((8,), -1)

        def target(self, tags):
            return torch.zeros(8, dtype=torch.long), 2

    g = torch.Generator().manual_seed(0)
    length = controls_for([parse_request("length", 3, {"pos": Pos()}, 6, g)], {"pos": Pos()})
    pos = controls_for([parse_request("pos", "DT NN", {"pos": Pos()}, 6, g)], {"pos": Pos()})
    assert [c.required for c in length] == [False] and [c.required for c in pos] == [True]
