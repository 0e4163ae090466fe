"""Modality-agnostic diffusion: schedules, the forward process, samplers and hooks.

Imports nothing from the rest of the package.
"""
from .diffusion import DiffusionConfig, GaussianDiffusion
from .sampling import SAMPLERS, Known, sample, step_moments
from .schedules import SCHEDULES, get_betas

__all__ = ["DiffusionConfig", "GaussianDiffusion", "Known", "SAMPLERS", "SCHEDULES",
           "get_betas", "sample", "step_moments"]
