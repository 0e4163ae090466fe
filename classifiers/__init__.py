"""Plug-in control classifiers over noisy Diffusion-LM latents.

Each classifier exposes what the sampler's step-guidance hook needs: a
differentiable log p(target | x_t, t) per sample. Several controls compose by
summing their log-probabilities. See `base.ControlClassifier`; the guidance
hook that applies them lives in the core (`diffusion_lm.core.guidance`).
"""
from diffusion_lm.core.guidance import Control, ControlGuidance, GuidanceConfig

from .base import ControlClassifier

__all__ = ["Control", "ControlClassifier", "ControlGuidance", "GuidanceConfig"]
