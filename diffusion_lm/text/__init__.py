"""Diffusion-LM for text: tokenizer, embeddings + rounding + clamping, denoiser, objective, data, I/O."""
from .generation import SampleConfig, generate, sample_latents
from .io import from_pretrained, load_diffusion, save_pretrained
from .loss import diffusion_lm_loss
from .model import DiffusionLM, DiffusionLMConfig, diffusion_config
from .tokenizer import WordTokenizer

__all__ = ["DiffusionLM", "DiffusionLMConfig", "SampleConfig", "WordTokenizer", "diffusion_config",
           "diffusion_lm_loss", "from_pretrained", "generate", "load_diffusion", "sample_latents", "save_pretrained"]
