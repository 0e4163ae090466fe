"""Diffusion-LM: controllable text generation with continuous diffusion (Li et al., 2022)."""

__version__ = "0.1.0"
