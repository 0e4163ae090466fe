"""Pipelines: what users call. Each composes a trained model's parts and the core sampler."""
from .baselines import BaselinePipeline
from .image import ImagePipeline
from .text import DiffusionLMPipeline, Generation

__all__ = ["BaselinePipeline", "DiffusionLMPipeline", "Generation", "ImagePipeline"]
