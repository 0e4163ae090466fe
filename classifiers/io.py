"""Classifiers save as config.json (kind, latent space, trunk, label sets, metrics) + model.safetensors."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from diffusion_lm.errors import UserError
from diffusion_lm.text.io import load_json, load_tensors, load_weights, save_json, save_tensors

from .encoder import EncoderConfig, LatentSpace
from .pos import PosClassifier
from .semantic import SemanticClassifier
from .tree import TreeClassifier

KINDS = {"pos": PosClassifier, "tree": TreeClassifier, "semantic": SemanticClassifier}


def save_classifier(clf, directory, metrics: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Weights first, then config.json: a folder with a config always has its weights."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in clf.state_dict().items()}
    save_tensors(d / "model.safetensors", state)
    save_json(d / "config.json", {"kind": clf.kind, "space": asdict(clf.space), "encoder": asdict(clf.encoder.cfg),
                                  **clf.extra_config(), "metrics": metrics or {}})


def load_classifier(directory, device: str | torch.device = "cpu", kind: str | None = None):
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"no classifier folder at {d}")
    cfg = load_json(d / "config.json")
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
    load_weights(clf, {k: v.float() for k, v in load_tensors(d / "model.safetensors").items()}, str(d))
    return clf.to(device).eval()
