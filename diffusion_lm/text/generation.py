"""Sampling sentences from a Diffusion-LM through the core's one sampling loop.

Text contributes two things to the loop: the clamping trick as the
x0-transform, and (for self-conditioned models) a denoiser that remembers its
previous x̂_0. Control (a later step-guidance hook) and infilling (Known
positions) pass straight through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..core import GaussianDiffusion, Known, sample
from ..core.sampling import EarlyExit
from ..core.sampling import get_sampler
from ..errors import UserError
from .mbr import mbr_select
from .model import DiffusionLM
from .tokenizer import WordTokenizer


@dataclass
class SampleConfig:
    steps: int = 200  # respaced sampling steps (≤ training T)
    sampler: str = "ddpm"  # ddpm | ddim
    eta: float = 0.0  # DDIM noise; 0 is deterministic
    variance: str = "small"  # DDPM posterior variance: small (σ̃²) or large (β)
    clamp: bool = True  # the clamping trick at every step
    length: Optional[int] = None  # sequence length (≤ model.max_len); default max_len
    exit_patience: int = 0  # stop a sentence once its clamped x̂_0 (its words) has stayed the same this many steps
    exit_confidence: float = 0.0  # under control, and only if the controls' classifiers give those words (t = 0)
    #                               at least this probability; 0 = settled words are enough
    exit_met: bool = False  # under control, and only once the controls that can check the settled words hold
    #                         (semantic: the value is stated; POS and tree have no such check)
    exit_met_patience: Optional[int] = None  # ... yet an unmet sentence whose words stay the same this many steps
    #                                          leaves all the same (None: it runs to the last step)
    pad_margin: Optional[int] = None  # where a batch's lengths are held: sample only its longest sentence (START …
    #                                   END) and this many PAD positions after; the rest is PAD. None = every position


class _SelfConditioned:
    """f_θ(x_t, t, x̂_0 of the previous step): state for one sampling run."""

    def __init__(self, model: DiffusionLM):
        self.model, self.prev = model, None

    def __call__(self, x_t, t):
        self.prev = self.model(x_t, t, self.prev)
        return self.prev

    def take_rows(self, rows, batch):  # early exit narrows the batch: keep the running rows' memory
        out = _SelfConditioned(self.model)
        out.prev = None if self.prev is None else self.prev[rows]
        return out


@dataclass
class _Clamp:
    """The clamping trick as the sampler's x0-transform; `exclude` (per row, or None) is narrowed with the batch."""

    model: DiffusionLM
    exclude: Optional[torch.Tensor] = None

    def __call__(self, x0, t):
        return self.model.clamp(x0, self.exclude)


def check_sample_config(cfg: SampleConfig, diffusion, max_len: int, key: str = "sample") -> None:
    """The sampler settings checked up front (a run that samples only at its end fails before training)."""
    try:
        diffusion.respace(cfg.steps)
        get_sampler(cfg.sampler)
    except ValueError as e:
        raise UserError(f"{key}: {e}") from None
    if isinstance(cfg.eta, bool) or not isinstance(cfg.eta, (int, float)) or not math.isfinite(cfg.eta) or cfg.eta < 0:
        raise UserError(f"{key}.eta must be a finite number >= 0, got {cfg.eta!r}")
    if cfg.variance not in ("small", "large"):
        raise UserError(f"unknown {key}.variance {cfg.variance!r}; choose small or large")
    if cfg.length is not None and not 1 <= cfg.length <= max_len:
        raise UserError(f"{key}.length must be in [1, {max_len}] for this model, got {cfg.length}")
    m = cfg.pad_margin
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= max_len):
        raise UserError(f"{key}.pad_margin must be null or an integer in [0, {max_len}], got {m!r}")
    if isinstance(cfg.exit_patience, bool) or not isinstance(cfg.exit_patience, int) or cfg.exit_patience < 0:
        raise UserError(f"{key}.exit_patience must be an integer >= 0 (0 = no early exit), got {cfg.exit_patience!r}")
    if not isinstance(cfg.exit_met, bool):
        raise UserError(f"{key}.exit_met must be true or false, got {cfg.exit_met!r}")
    m = cfg.exit_met_patience
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < max(cfg.exit_patience, 1)):
        raise UserError(f"{key}.exit_met_patience must be null or an integer >= exit_patience "
                        f"({cfg.exit_patience}), got {m!r}")
    c = cfg.exit_confidence
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 1:
        raise UserError(f"{key}.exit_confidence must be a probability in [0, 1], got {c!r}")


def _check_diffusion(diffusion) -> None:
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"expected the GaussianDiffusion the model was trained with (from_pretrained returns it "
                        f"beside the model), got {type(diffusion).__name__}")


def sample_latents(model: DiffusionLM, diffusion: GaussianDiffusion, n: int, cfg: SampleConfig, *, step_hook=None,
                   known: Known | None = None, exclude: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   callback: Callable[[dict], None] | None = None, progress: bool = True,
                   exit_accept: Callable | None = None) -> torch.Tensor:
    """n samples x_0 of shape (n, L, d), by `diffusion` respaced to cfg.steps.

    With cfg.exit_patience > 0 a sentence leaves the batch once its clamped x̂_0 has not changed for that
    many steps (and `exit_accept(x0, step_hook)`, if given, agrees): its words are final.
    """
    _check_diffusion(diffusion)
    c = model.config
    check_sample_config(cfg, diffusion, c.max_len)
    length = c.max_len if cfg.length is None else cfg.length  # 0 is out of range, not "the default"
    if not 1 <= length <= c.max_len:
        raise UserError(f"length must be in [1, {c.max_len}] for this model, got {length}")
    if n < 1:
        raise UserError(f"number of samples must be at least 1, got {n}")
    try:
        diffusion = diffusion.respace(cfg.steps)
    except ValueError as e:
        raise UserError(str(e)) from None
    model_fn = _SelfConditioned(model) if c.self_condition else model
    x0_transform = _Clamp(model, exclude) if cfg.clamp else None
    early_exit = EarlyExit(cfg.exit_patience, exit_accept, cfg.exit_met_patience) if cfg.exit_patience else None
    device = next(model.parameters()).device
    try:
        return sample(model_fn, diffusion, (n, length, c.emb_dim), sampler=cfg.sampler, eta=cfg.eta,
                      variance=cfg.variance, prediction="x0", x0_transform=x0_transform,
                      step_hook=step_hook, known=known, generator=generator, device=device,
                      callback=callback, progress=progress, early_exit=early_exit)
    except ValueError as e:  # unknown sampler / variance, bad eta
        raise UserError(str(e)) from None


@torch.no_grad()
def generate(model: DiffusionLM, tokenizer: WordTokenizer, diffusion: GaussianDiffusion, n: int,
             cfg: SampleConfig | None = None, batch_size: int = 64, seed: int | None = 0, progress: bool = True,
             mbr: int = 1, **kw) -> list[str]:
    """n sentences: sample x_0, round each position to its nearest word, decode.

    mbr > 1 draws that many candidates for every sentence and keeps the MBR pick
    (see `mbr.py`); it is for unconditional sampling, where rows are interchangeable.
    """
    _check_diffusion(diffusion)
    cfg = cfg or SampleConfig()
    if mbr < 1:
        raise UserError(f"mbr must be at least 1 (candidates per sentence), got {mbr}")
    if mbr > 1:
        if any(kw.get(k) is not None for k in ("known", "exclude", "step_hook")):
            raise UserError("mbr > 1 is for unconditional sampling; controlled generation picks with select=")
        return mbr_select(generate(model, tokenizer, diffusion, n * mbr, cfg, batch_size, seed, progress, **kw), mbr)
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device)
    if seed is not None:
        generator.manual_seed(seed)
    out: list[str] = []
    while len(out) < n:
        b = min(batch_size, n - len(out))
        x0 = sample_latents(model, diffusion, b, cfg, generator=generator, progress=progress, **kw)
        out += [tokenizer.decode(row) for row in model.round(x0, kw.get("exclude"))]
    return out
