"""Datasets every model may read: E2E restaurant descriptions (text) through `datasets`."""
from .e2e import DataConfig, load_e2e, tokenize_e2e

__all__ = ["DataConfig", "load_e2e", "tokenize_e2e"]
