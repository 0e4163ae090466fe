"""Diffusion-LM for text: tokenizer, embeddings + rounding + clamping, denoiser, objective, data, I/O."""
from .generation import SampleConfig, generate, sample_latents
from .io import from_pretrained, save_pretrained
from .loss import diffusion_lm_loss
from .model import DiffusionLM, DiffusionLMConfig
from .tokenizer import WordTokenizer

__all__ = ["DiffusionLM", "DiffusionLMConfig", "SampleConfig", "WordTokenizer", "diffusion_lm_loss",
           "from_pretrained", "generate", "sample_latents", "save_pretrained"]
