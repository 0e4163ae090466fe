"""Classifiers save as config.json (kind, latent space, trunk, label sets, metrics) + model.safetensors."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from diffusion_lm.errors import UserError
from diffusion_lm.io import build_checked, config_from_dict, load_pretrained, load_weights, save_pretrained

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


def check_guidance_weight(weight, where: str) -> float:
    """A classifier's guidance_weight (its pull relative to λ): a number in (0, 100], else a one-line error."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 100:
        raise UserError(f"{where}: guidance_weight must be a number in (0, 100], got {weight!r}")
    return float(weight)


def load_classifier(directory, device: str | torch.device = "cpu", kind: str | None = None):
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"no classifier folder at {d}")
    cfg, state = load_pretrained(d, "classifier")
    if cfg.get("kind") not in KINDS:
        raise UserError(f"{d}/config.json: unknown classifier kind {cfg.get('kind')!r} (known: {', '.join(KINDS)})")
    if kind is not None and cfg["kind"] != kind:
        raise UserError(f"{d} holds a {cfg['kind']} classifier, not a {kind} one")
    for key in ("space", "encoder"):
        if key not in cfg:
            raise UserError(f"{d}/config.json has no {key!r}; it is not a classifier folder (or is damaged)")
    where = f"{d}/config.json"
    space = config_from_dict(LatentSpace, cfg.pop("space"), f"{where}: space")
    encoder = config_from_dict(EncoderConfig, cfg.pop("encoder"), f"{where}: encoder")
    try:
        space.validate(where)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None
    cls = KINDS[cfg.pop("kind")]
    cfg.pop("metrics", None)
    # how hard this classifier pulls, relative to λ: 1 unless calibrated when it was shipped (a small classifier
    # whose log-probabilities are flatter than the default one's may need more)
    weight = check_guidance_weight(cfg.pop("guidance_weight", 1.0), where)
    try:
        clf = build_checked(lambda: cls(space, encoder, **cfg), state, str(d))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise UserError(f"{d}/config.json does not describe a {cls.kind} classifier: {e}") from None
    load_weights(clf, state, str(d))
    clf.guidance_weight = weight
    return clf.to(device).eval()
