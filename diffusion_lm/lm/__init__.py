"""Autoregressive LMs: the fluency teacher (and, later, the baselines' base LM)."""
from .teacher import ARLM, ARLMConfig, ARTrainConfig, corpus_perplexity, train_lm

__all__ = ["ARLM", "ARLMConfig", "ARTrainConfig", "corpus_perplexity", "train_lm"]
