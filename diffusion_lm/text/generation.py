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


class _SelfConditioned:
    """f_θ(x_t, t, x̂_0 of the previous step): state for one sampling run."""

    def __init__(self, model: DiffusionLM):
        self.model, self.prev = model, None

    def __call__(self, x_t, t):
        self.prev = self.model(x_t, t, self.prev)
        return self.prev


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


def _check_diffusion(diffusion) -> None:
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"expected the GaussianDiffusion the model was trained with (from_pretrained returns it "
                        f"beside the model), got {type(diffusion).__name__}")


def sample_latents(model: DiffusionLM, diffusion: GaussianDiffusion, n: int, cfg: SampleConfig, *, step_hook=None,
                   known: Known | None = None, exclude: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   callback: Callable[[dict], None] | None = None, progress: bool = True) -> torch.Tensor:
    """n samples x_0 of shape (n, L, d), by `diffusion` respaced to cfg.steps."""
    _check_diffusion(diffusion)
    c = model.config
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
    x0_transform = (lambda x0, t: model.clamp(x0, exclude)) if cfg.clamp else None
    device = next(model.parameters()).device
    try:
        return sample(model_fn, diffusion, (n, length, c.emb_dim), sampler=cfg.sampler, eta=cfg.eta,
                      variance=cfg.variance, prediction="x0", x0_transform=x0_transform,
                      step_hook=step_hook, known=known, generator=generator, device=device,
                      callback=callback, progress=progress)
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
