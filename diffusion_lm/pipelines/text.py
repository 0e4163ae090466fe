"""The Diffusion-LM pipeline: what users call to get sentences, controlled or not.

    pipe = DiffusionLMPipeline.from_pretrained("shipped")
    pipe(task="pos", target="DT NNP VBZ DT JJ NN .", n=5)     # five sentences with those tags
    pipe.sample(n=5)                                          # no control

A pipeline only composes parts (diffusers' idea): the frozen denoiser and its tokenizer, the control
classifiers a task needs (loaded on first use), the task registry's target parsing, the core's
sampler with the clamping trick as its x0-transform, control as its step hook and lengths / infill
contexts as known positions. Batching, best-of-`select` reranking and MBR live here, not in the CLI.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import torch

from classifiers.io import load_classifier
from classifiers.tasks import NEEDS, controls_for, parse_request

from ..assets import resolve_asset, resolve_checkpoint
from ..core import GaussianDiffusion
from ..core.guidance import Control, ControlGuidance, GuidanceConfig
from ..errors import UserError
from ..io import read_jsonl
from ..runtime import pick_device
from ..sharding import owned_batches
from ..tasks import get_task
from ..text import SampleConfig, from_pretrained, generate
from ..text.constraints import infill_constraint, length_constraint, trim_padding, words_only
from ..text.model import DiffusionLM
from ..text.tokenizer import WordTokenizer

CLASSIFIER_KINDS = ("pos", "tree", "semantic")
MAX_STRENGTH = 1e4  # far above any useful λ: the default is 50 and the measured sweeps stop there


MAX_SEED = 2 ** 62  # torch's generators take 64 bits; the pipelines add offsets to the seed


def _count(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UserError(f"{name} must be at most {maximum}, got {value}")
    return value


MAX_SENTENCES = 1_000_000  # one command's sentences (targets × n × select, or n × mbr): more is no run, but a hang


def _check_total(what: str, total: int) -> None:
    if total > MAX_SENTENCES:
        raise UserError(f"{what} asks for {total:,} sentences; at most {MAX_SENTENCES:,} a command")


def targets_from_file(task: str, path: str, limit: int | None = None) -> list:
    """The `target` of each row of a JSONL file; `shipped` is the package's own <task>.jsonl."""
    if path == "shipped":
        path = f"{resolve_asset('shipped', 'targets')}/{task}.jsonl"
    rows = read_jsonl(path, "targets file", allow_empty=False)
    for k, r in enumerate(rows, 1):
        if "target" not in r:
            raise UserError(f"{path} row {k}: missing 'target'")
    if limit is not None:
        _count("limit", limit)
    return [r["target"] for r in rows][:limit]


def _controls_met(x0: torch.Tensor, hook: ControlGuidance, floor: float | None = None,
                  check: bool = False) -> torch.Tensor:
    """Early exit's veto: do the settled words (clamped x̂_0) meet the controls? With a `floor`, the required
    controls' log p(c | words, t = 0) must reach it (sample.exit_confidence); with `check`, every control whose
    classifier can check the words must hold (sample.exit_met). A shape steer or the fluency LM's term is no
    control to meet."""
    ok = hook.met(x0) if check else torch.ones(len(x0), dtype=torch.bool, device=x0.device)
    if floor is not None:
        hook = replace(hook, controls=[c for c in hook.controls if c.required])
        with torch.enable_grad():  # some classifiers (the tree CRF) differentiate internally
            zeros = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
            ok &= hook.log_prob(x0, zeros).detach() >= floor
    return ok


def _weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    if value > MAX_STRENGTH:
        raise UserError(f"{name} must be at most {MAX_STRENGTH:g}, got {value!r}")
    return float(value)


def _keep_better(texts, best, draw, score):
    """Per row, the draw with the higher score so far (the first draw when there is none yet)."""
    if texts is None:
        return draw, score
    better = score > best
    return [d if w else o for d, o, w in zip(draw, texts, better.tolist())], torch.where(better, score, best)


@dataclass
class Generation:
    """One sentence with the target it was drawn for."""

    target: Any
    text: str
    job: int = 0  # its place in the run's jobs (targets × n, in order): what merges shards back in order


class DiffusionLMPipeline:
    def __init__(self, model: DiffusionLM, tokenizer: WordTokenizer, diffusion: GaussianDiffusion,
                 classifiers: dict[str, str] | None = None, device: str = "cpu"):
        self.model, self.tokenizer, self.diffusion, self.device = model, tokenizer, diffusion, device
        # kind -> folder or `shipped`; loaded (and checked against the model's latent space) on first use
        self.classifier_paths = {k: "shipped" for k in CLASSIFIER_KINDS} | dict(classifiers or {})
        self._classifiers: dict[str, Any] = {}
        self.fluency_lm = "shipped"  # the base LM (models/base-lm) for lm_guidance and lm_rerank; never the teacher
        self._potential = None
        self.lm_t_range: tuple[int, int] | None = None

    @classmethod
    def from_pretrained(cls, checkpoint: str = "shipped", classifiers: dict[str, str] | None = None,
                        device: str = "auto") -> "DiffusionLMPipeline":
        """`shipped` (the default model and the classifiers trained for it), `shipped:<name>`, or a
        folder from `diffusion-lm train`; `classifiers` maps pos / tree / semantic to folders."""
        unknown = sorted(set(classifiers or {}) - set(CLASSIFIER_KINDS))
        if unknown:
            raise UserError(f"unknown classifier kind {unknown[0]!r}; choose from {', '.join(CLASSIFIER_KINDS)}")
        device = str(pick_device(device))
        model, tokenizer, diffusion = from_pretrained(resolve_checkpoint(checkpoint), device=device)
        return cls(model, tokenizer, diffusion, classifiers, device)

    # ---- parts -----------------------------------------------------------------------------
    def classifier(self, kind: str):
        if kind not in self._classifiers:
            where = self.classifier_paths[kind]
            clf = load_classifier(resolve_asset(where, "classifier", kind), device=self.device, kind=kind)
            clf.space.check(self.model, f"the {kind} classifier ({where})")
            clf.requires_grad_(False)
            self._classifiers[kind] = clf
        return self._classifiers[kind]

    def set_fluency(self, lm: str = "shipped", t_range=None) -> None:
        """The base LM that lm_guidance / lm_rerank use (`shipped`: models/base-lm, or a folder from
        `diffusion-lm train-lm`) and the training timesteps [lo, hi] where lm_guidance acts (None: all)."""
        if not isinstance(lm, str) or not lm.strip():
            raise UserError(f"fluency_lm must name an LM folder or `shipped`, got {lm!r}")
        if t_range is not None:
            t_range = list(t_range) if isinstance(t_range, tuple) else t_range
            T = self.diffusion.num_timesteps
            if (not isinstance(t_range, list) or len(t_range) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in t_range)
                    or not 0 <= t_range[0] <= t_range[1] <= T - 1):
                raise UserError(f"lm_guidance_t must be [lo, hi] with 0 <= lo <= hi <= {T - 1}, got {t_range!r}")
            t_range = tuple(t_range)
        if lm != self.fluency_lm:
            self._potential = None
        self.fluency_lm, self.lm_t_range = lm, t_range

    def potential(self):
        """The fluency LM as a guidance potential (diffusion_lm.lm.potential), loaded on first use."""
        if self._potential is None:
            from ..lm import ARLM
            from ..lm.potential import LMPotential

            where = resolve_asset(self.fluency_lm, "model", "base-lm")
            teacher = Path(resolve_asset("shipped", "teacher")).resolve()
            if Path(where).resolve() == teacher:
                raise UserError("the fluency LM must not be the teacher that judges fluency; use the base LM")
            self._potential = LMPotential(ARLM.load(where, device=self.device), self.model, self.tokenizer,
                                          self.diffusion.alpha_bar)
        return self._potential

    def _fluency(self, hook: ControlGuidance | None, lm_guidance: float, gcfg: GuidanceConfig | None):
        """The step hook with − lm_guidance · log p_LM(soft words) added to the guided objective (beside
        λ · Σ_c −log p(c | x) and the Gaussian term), active over the training timesteps `self.lm_t_range`
        (None: every step)."""
        if not lm_guidance:
            return hook
        strength = hook.config.strength if hook is not None else None
        if not strength:  # no classifiers, or λ = 0: the LM's term alone, at its own weight
            lm = Control(self.potential(), None, lm_guidance, self.lm_t_range, required=False)
            return ControlGuidance([lm], replace(gcfg or GuidanceConfig(), strength=1.0))
        # the hook multiplies every control by λ: the LM's weight is lm_guidance in the objective itself
        lm = Control(self.potential(), None, lm_guidance / strength, self.lm_t_range, required=False)
        return ControlGuidance(hook.controls + [lm], hook.config)

    def _rerank_score(self, hook: ControlGuidance | None, texts: list[str], lm_rerank: float) -> torch.Tensor:
        """select's score: the classifiers' log p(c | words) (t = 0), minus lm_rerank × the base LM's mean NLL."""
        score = self._word_log_prob(hook, texts) if hook is not None else torch.zeros(len(texts))
        if lm_rerank:
            score = score.cpu() - lm_rerank * self.potential().mean_nll(texts)
        return score.cpu()

    def classifiers_for(self, task: str, length_shape: bool = True) -> dict:
        kinds = NEEDS.get(task, ()) + (("pos",) if task == "length" and length_shape else ())
        return {k: self.classifier(k) for k in kinds}

    def guidance(self, task: str, strength: float | None = None, config: GuidanceConfig | None = None) -> GuidanceConfig:
        """The guidance settings with λ from `strength`, else `config.strength`, else the task's default."""
        g = replace(config) if config is not None else GuidanceConfig()
        chosen = strength if strength is not None else g.strength
        if chosen is None:
            chosen = get_task(task).default_strength
        g.strength = _weight("strength", chosen)  # at 1e308 the update overflowed float32: every word [UNK]
        if not (isinstance(g.updates, int) and g.updates >= 0 and math.isfinite(g.step_size) and g.step_size > 0
                and isinstance(g.skip_last, int) and g.skip_last >= 0
                and isinstance(g.every, int) and not isinstance(g.every, bool) and g.every >= 1):
            raise UserError("guidance needs updates >= 0, step_size > 0, skip_last >= 0 and every >= 1")
        return g

    # ---- uncontrolled ----------------------------------------------------------------------
    def sample(self, n: int = 5, *, seed: int = 0, batch_size: int = 64, mbr: int = 1, select: int = 1,
               lm_guidance: float = 0.0, lm_rerank: float = 0.0, guidance: GuidanceConfig | None = None,
               sample: SampleConfig | None = None, callback: Callable[[dict], None] | None = None,
               progress: bool = True) -> list[str]:
        """n sentences with no control (mbr > 1: the minimum-Bayes-risk pick of that many candidates).

        lm_guidance > 0 steers every step toward what the base LM finds likely (weight of its
        log-likelihood, with `guidance`'s K and step size); select > 1 with lm_rerank > 0 keeps, of that
        many draws, the one the base LM scores best."""
        _count("n", n), _count("batch_size", batch_size), _count("mbr", mbr), _count("seed", seed, 0, MAX_SEED)
        _count("select", select)
        lm_guidance, lm_rerank = _weight("lm_guidance", lm_guidance), _weight("lm_rerank", lm_rerank)
        if select > 1 and not lm_rerank:
            raise UserError("select > 1 with no control needs lm_rerank > 0 (the base LM picks)")
        if (select > 1 or lm_guidance) and mbr > 1:
            raise UserError("mbr > 1 does not combine with select or lm_guidance")
        _check_total("n × mbr × select", n * mbr * select)
        if lm_guidance or lm_rerank:
            self.potential()  # a bad fluency LM fails here, before anything is sampled
        cfg = sample or SampleConfig()
        if mbr > 1 or not (lm_guidance or select > 1):
            return generate(self.model, self.tokenizer, self.diffusion, n, cfg,
                            batch_size=batch_size, seed=seed, mbr=mbr, callback=callback, progress=progress)
        out: list[str] = []
        for b in range(0, n, batch_size):
            m = min(batch_size, n - b)
            texts, best = None, None
            hook = self._fluency(None, lm_guidance, guidance)
            for k in range(select):
                draw = generate(self.model, self.tokenizer, self.diffusion, m, cfg, batch_size=m,
                                seed=seed + b + 100003 * k, step_hook=hook, callback=callback, progress=progress)
                if select == 1:
                    texts = draw
                    break
                score = self._rerank_score(None, draw, lm_rerank)
                texts, best = _keep_better(texts, best, draw, score)
            out += texts
        return out

    # ---- controlled ------------------------------------------------------------------------
    def __call__(self, task: str, target=None, *, targets: list | None = None, n: int = 1, seed: int = 0,
                 batch_size: int = 50, select: int = 1, strength: float | None = None,
                 guidance: GuidanceConfig | None = None, sample: SampleConfig | None = None,
                 length_shape: bool = True, left: str = "", right: str = "", middle: int = 8,
                 lm_guidance: float = 0.0, lm_rerank: float = 0.0,
                 callback: Callable[[dict], None] | None = None, progress: bool = True) -> list[str]:
        """n sentences for `target` (or for each of `targets`, in order), steered toward it.

        task: pos | tree | spans | semantic | compose | length | infill (infill takes left, right and
        middle, the number of free words, instead of a target). select > 1 draws that many per
        sentence and keeps the one the task's classifiers score best on the finished words (t = 0),
        less lm_rerank × its mean NLL under the base LM. lm_guidance > 0 adds the base LM's
        log-likelihood of the soft-rounded words (diffusion_lm.lm.potential) to the guided objective at
        that weight (the classifiers' log p(c | x) weigh λ = strength).
        """
        return [g.text for g in self.generate(task, target, targets=targets, n=n, seed=seed, batch_size=batch_size,
                                              select=select, strength=strength, guidance=guidance, sample=sample,
                                              length_shape=length_shape, left=left, right=right, middle=middle,
                                              lm_guidance=lm_guidance, lm_rerank=lm_rerank,
                                              callback=callback, progress=progress)]

    def generate(self, task: str, target=None, *, targets: list | None = None, n: int = 1, seed: int = 0,
                 batch_size: int = 50, select: int = 1, strength: float | None = None,
                 guidance: GuidanceConfig | None = None, sample: SampleConfig | None = None,
                 length_shape: bool = True, left: str = "", right: str = "", middle: int = 8,
                 lm_guidance: float = 0.0, lm_rerank: float = 0.0,
                 callback: Callable[[dict], None] | None = None, progress: bool = True,
                 on_batch: Callable[[list[Generation]], None] | None = None,
                 shard: tuple[int, int] | None = None) -> list[Generation]:
        """As `__call__`, keeping each sentence's target (and calling `on_batch` as batches finish). With
        `shard=(i, N)`, only the batches of shard i of N (diffusion_lm.sharding): each batch is seeded by its
        place in the whole run, so the N shards' sentences are exactly one process's."""
        get_task(task)  # an unknown task fails here, in one line
        n, batch_size, select, seed = (_count("n", n), _count("batch_size", batch_size), _count("select", select),
                                       _count("seed", seed, 0, MAX_SEED))
        model, tok = self.model, self.tokenizer
        classifiers = {} if task == "infill" else self.classifiers_for(task, length_shape)
        lm_guidance, lm_rerank = _weight("lm_guidance", lm_guidance), _weight("lm_rerank", lm_rerank)
        if select > 1 and not classifiers and not lm_rerank:
            raise UserError(f"select > 1 needs a classifier task (pos, tree, spans, semantic, compose) or "
                            f"lm_rerank > 0, not {task} alone")
        if task == "infill":
            if target is not None or targets is not None:
                raise UserError("infill takes left=, right= and middle=, not a target")
            _count("middle", middle)
            if not isinstance(left, str) or not isinstance(right, str):
                raise UserError("infill's left and right must be text")
            targets = [f"{left} ___ {right}".strip()]
        elif (target is None) == (targets is None):
            raise UserError("give exactly one of target=<inline target> or targets=<list of targets>")
        elif targets is None:
            targets = [target]
        if not targets:
            raise UserError("no targets to generate for")
        _check_total("targets × n × select", len(targets) * n * select)
        if lm_guidance or lm_rerank:
            self.potential()  # a bad fluency LM fails here, before anything is sampled
        sample_cfg = replace(sample or SampleConfig(), length=None)  # constraints span the model's full max_len
        gcfg = self.guidance(task, strength, guidance) if classifiers else None
        g = torch.Generator().manual_seed(seed)
        # every target is checked before anything is sampled: a bad one fails in one line, nothing written
        L = model.config.max_len
        requests = ([None] * len(targets) if task == "infill"
                    else [parse_request(task, t, classifiers, L - 2, g) for t in targets])
        jobs = [(i, t) for i, t in enumerate(targets) for _ in range(n)]
        out: list[Generation] = []
        for b in owned_batches(len(jobs), batch_size, shard):
            chunk = jobs[b:b + batch_size]
            reqs = [requests[i] for i, _ in chunk]
            known = hook = None
            cfg_b = sample_cfg
            if task == "infill":
                known = infill_constraint(model, tok, left, right, middle, len(chunk))
            elif reqs[0].length is not None:
                known = length_constraint(model, tok, [r.length for r in reqs])
            if known is not None and sample_cfg.pad_margin is not None:
                # The positions past END are held PAD in every row: sample only the batch's longest sentence and
                # pad_margin of them. The denoiser and classifiers then run on a shorter sequence than they were
                # trained on (measured in docs/experiments/fast_decoding.md); decoding stops at END either way.
                known = trim_padding(model, tok, known, sample_cfg.pad_margin)
                cfg_b = replace(sample_cfg, length=known.values.shape[1])
            if classifiers:
                hook = ControlGuidance(controls_for(reqs, classifiers, self.device), gcfg)
            exclude = None if known is None else words_only(known, tok, len(tok))
            steer = self._fluency(hook, lm_guidance, gcfg)
            accept = None
            # the check only where a control can be checked (semantic): POS and tree rows exit with no veto call
            check = sample_cfg.exit_met and hook is not None and any(
                c.required and hasattr(c.classifier, "satisfied") for c in hook.controls)
            if hook is not None and sample_cfg.exit_patience and (sample_cfg.exit_confidence > 0 or check):
                accept = partial(_controls_met, floor=(math.log(sample_cfg.exit_confidence)
                                                       if sample_cfg.exit_confidence > 0 else None), check=check)
            texts, best = None, None
            for k in range(select):  # best of `select` draws by the controls' own log p(c | words) at t = 0
                draw = generate(model, tok, self.diffusion, len(chunk), cfg_b, batch_size=len(chunk),
                                seed=seed + b + 100003 * k, known=known, exclude=exclude, step_hook=steer,
                                callback=callback, progress=progress, exit_accept=accept)
                if select == 1:
                    texts = draw
                    break
                score = self._rerank_score(hook, draw, lm_rerank)
                texts, best = _keep_better(texts, best, draw, score)
            batch = [Generation(t, text, b + k) for k, ((_, t), text) in enumerate(zip(chunk, texts))]
            out += batch
            if on_batch is not None:
                on_batch(batch)
        return out

    @torch.no_grad()
    def _word_log_prob(self, hook: ControlGuidance, texts: list[str]) -> torch.Tensor:
        """Σ_c log p(c | EMB(words), t = 0): how well finished sentences meet their targets, by the classifiers."""
        ids = self.tokenizer.encode_batch(texts, self.model.config.max_len)[0].to(self.device)
        with torch.enable_grad():  # some classifiers (the tree CRF) differentiate internally
            zeros = torch.zeros(len(texts), dtype=torch.long, device=self.device)
            return hook.log_prob(self.model.embed(ids), zeros).detach()
