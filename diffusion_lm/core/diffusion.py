"""Gaussian diffusion over tensors of any shape (B, ...).

Index convention: arrays are indexed by i = 0..T−1, where index i is the
paper's step t = i + 1. So `alpha_bar[0]` is ᾱ_1, the least noisy latent, and
the model is always called with the index of the *training* timestep, also
after respacing (see `timestep_map`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import get_betas


def _gather(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as float32, broadcastable against `like` (B, ...)."""
    out = arr.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class DiffusionConfig:
    schedule: str = "sqrt"
    steps: int = 2000


class GaussianDiffusion:
    """The forward process q, its posterior, and conversions between predictions.

    Holds float64 schedule arrays; results come back in the input's dtype.
    """

    def __init__(self, betas: torch.Tensor, timestep_map: torch.Tensor | None = None):
        betas = betas.to(torch.float64)
        if betas.dim() != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # Index i of this process is training step timestep_map[i] of the model.
        self.timestep_map = (
            torch.arange(self.num_timesteps) if timestep_map is None else timestep_map.long()
        )
        alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(c0 · x_0 + ct · x_t, σ̃²_t)
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_coef_xt = (1.0 - self.alpha_bar_prev) * alphas.sqrt() / (1.0 - self.alpha_bar)
        # σ̃²_1 is 0; the log is clipped with the next value, as in Ho et al.
        var = self.posterior_variance.clone()
        if self.num_timesteps > 1:
            var[0] = self.posterior_variance[1]
        self.posterior_log_variance_clipped = var.clamp_min(1e-20).log()

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "GaussianDiffusion":
        return cls(get_betas(cfg.schedule, cfg.steps))

    # ---- respacing -------------------------------------------------------
    def respace(self, num_steps: int) -> "GaussianDiffusion":
        """A process over `num_steps` evenly spaced training steps with the same ᾱ there.

        β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}} keeps q(x_t | x_0) identical at the kept
        steps, so a model trained with T steps samples with fewer.
        """
        T = self.num_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"sampling steps must be in [1, {T}], got {num_steps}")
        if num_steps == T:
            return self
        # Always keep the noisiest step (sampling starts there) and, for n ≥ 2, the cleanest.
        kept = torch.linspace(T - 1, 0, num_steps).round().long().unique()
        ab = self.alpha_bar[kept]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return GaussianDiffusion(1.0 - ab / ab_prev, timestep_map=self.timestep_map[kept])

    # ---- forward process -------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)."""
        mean = _gather(self.sqrt_alpha_bar, t, x0) * x0
        var = _gather(1.0 - self.alpha_bar, t, x0).expand_as(x0)
        return mean, var

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Draw x_t ~ q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return _gather(self.sqrt_alpha_bar, t, x0) * x0 + _gather(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = _gather(self.posterior_coef_x0, t, xt) * x0 + _gather(self.posterior_coef_xt, t, xt) * xt
        var = _gather(self.posterior_variance, t, xt)
        log_var = _gather(self.posterior_log_variance_clipped, t, xt)
        return mean, var, log_var

    # ---- prediction conversions -------------------------------------------
    def eps_from_x0(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return (xt - _gather(self.sqrt_alpha_bar, t, xt) * x0) / _gather(self.sqrt_one_minus_alpha_bar, t, xt)

    def x0_from_eps(self, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return (xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / _gather(self.sqrt_alpha_bar, t, xt)

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho, 2022)."""
        return _gather(self.sqrt_alpha_bar, t, x0) * eps - _gather(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def x0_from_v(self, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return _gather(self.sqrt_alpha_bar, t, xt) * xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt) * v

    def predict_x0(self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prediction: str):
        """Turn a model output of kind `prediction` ('x0', 'eps' or 'v') into x̂_0."""
        if prediction == "x0":
            return output
        if prediction == "eps":
            return self.x0_from_eps(output, xt, t)
        if prediction == "v":
            return self.x0_from_v(output, xt, t)
        raise ValueError(f"unknown prediction type {prediction!r}; choose x0, eps or v")
