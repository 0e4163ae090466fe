"""Modality-agnostic diffusion: schedules, the forward process, samplers and hooks.

Imports nothing from the rest of the package.
"""
from .classifier_free import ClassifierFreeGuidance
from .diffusion import (DIFFUSION_FILE, DiffusionConfig, GaussianDiffusion, load_diffusion_config,
                        save_diffusion_config)
from .guidance import Control, ControlGuidance, GuidanceConfig
from .sampling import SAMPLERS, Known, ddim_step, ddpm_step, get_sampler, sample, step_moments
from .schedules import SCHEDULES, get_betas
from .thresholding import DynamicThreshold, StaticThreshold

__all__ = ["DIFFUSION_FILE", "ClassifierFreeGuidance", "Control", "ControlGuidance", "DiffusionConfig",
           "DynamicThreshold", "GaussianDiffusion", "GuidanceConfig", "Known", "SAMPLERS", "SCHEDULES",
           "StaticThreshold", "ddim_step", "ddpm_step", "get_betas", "get_sampler", "load_diffusion_config",
           "sample", "save_diffusion_config", "step_moments"]
