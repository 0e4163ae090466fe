"""Plug-in control classifiers over noisy Diffusion-LM latents.

Each classifier exposes what the sampler's step-guidance hook needs: a
differentiable log p(target | x_t, t) per sample. Several controls compose by
summing their log-probabilities. See `base.ControlClassifier`.
"""
from .base import ControlClassifier

__all__ = ["ControlClassifier"]
