"""Noise schedules: ᾱ_t for t = 1..T, returned as betas β_t (float64).

Each schedule is a function of T alone, so any number of steps works. The
registry `SCHEDULES` maps the config name to the function.
"""
from __future__ import annotations

import math

import torch


def _betas_from_alpha_bar(alpha_bar_fn, T: int, max_beta: float = 0.999) -> torch.Tensor:
    """β_t = 1 − ᾱ(t/T) / ᾱ((t−1)/T), clipped so no step destroys all signal at once."""
    betas = []
    for i in range(T):
        a_prev, a_next = alpha_bar_fn(i / T), alpha_bar_fn((i + 1) / T)
        betas.append(min(1.0 - a_next / a_prev, max_beta))
    return torch.tensor(betas, dtype=torch.float64)


def linear(T: int) -> torch.Tensor:
    """Ho et al. (2020): β from 1e-4 to 0.02 at T = 1000, rescaled for other T."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=0.999)


def cosine(T: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(u) = cos²((u + s) / (1 + s) · π/2)."""
    return _betas_from_alpha_bar(lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T)


def sqrt(T: int, s: float = 1e-4) -> torch.Tensor:
    """Diffusion-LM (Li et al., 2022): ᾱ(u) = 1 − sqrt(u + s).

    Noise rises fast at the first steps, where word embeddings would otherwise
    stay trivially recoverable, and slowly near t = T.
    """
    return _betas_from_alpha_bar(lambda u: 1.0 - math.sqrt(u + s), T)


SCHEDULES = {"linear": linear, "cosine": cosine, "sqrt": sqrt}


def get_betas(name: str, T: int) -> torch.Tensor:
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    if T < 1:
        raise ValueError(f"the number of diffusion steps must be at least 1, got {T}")
    return SCHEDULES[name](T)
