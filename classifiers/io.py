"""Classifiers save as config.json (kind, latent space, trunk, label sets, metrics) + model.safetensors."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from diffusion_lm.errors import UserError
from diffusion_lm.io import load_pretrained, load_weights, save_pretrained

from .encoder import EncoderConfig, LatentSpace
from .pos import PosClassifier
from .semantic import SemanticClassifier
from .tree import TreeClassifier

KINDS = {"pos": PosClassifier, "tree": TreeClassifier, "semantic": SemanticClassifier}


def save_classifier(clf, directory, metrics: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Weights first, then config.json: a folder with a config always has its weights."""
    config = {"kind": clf.kind, "space": asdict(clf.space), "encoder": asdict(clf.encoder.cfg),
              **clf.extra_config(), "metrics": metrics or {}}
    save_pretrained(directory, config, clf.state_dict(), dtype=dtype)


def load_classifier(directory, device: str | torch.device = "cpu", kind: str | None = None):
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"no classifier folder at {d}")
    cfg, state = load_pretrained(d, "classifier")
    if cfg.get("kind") not in KINDS:
        raise UserError(f"{d}/config.json: unknown classifier kind {cfg.get('kind')!r} (known: {', '.join(KINDS)})")
    if kind is not None and cfg["kind"] != kind:
        raise UserError(f"{d} holds a {cfg['kind']} classifier, not a {kind} one")
    try:
        space, encoder = LatentSpace(**cfg.pop("space")), EncoderConfig(**cfg.pop("encoder"))
    except TypeError as e:
        raise UserError(f"{d}/config.json: {e}") from None
    cls = KINDS[cfg.pop("kind")]
    cfg.pop("metrics", None)
    try:
        clf = cls(space, encoder, **cfg)
    except TypeError as e:
        raise UserError(f"{d}/config.json does not describe a {cls.kind} classifier: {e}") from None
    load_weights(clf, state, str(d))
    return clf.to(device).eval()
