"""Modality-agnostic diffusion: schedules, the forward process, samplers and hooks.

Imports nothing from the rest of the package.
"""
from .diffusion import DiffusionConfig, GaussianDiffusion
from .guidance import Control, ControlGuidance, GuidanceConfig
from .sampling import SAMPLERS, Known, sample, step_moments
from .schedules import SCHEDULES, get_betas

__all__ = ["Control", "ControlGuidance", "DiffusionConfig", "GaussianDiffusion", "GuidanceConfig", "Known", "SAMPLERS", "SCHEDULES",
           "get_betas", "sample", "step_moments"]
