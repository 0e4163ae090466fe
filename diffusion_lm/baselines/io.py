"""The baselines' attribute models save as config.json (kind, constructor arguments, metrics) + model.safetensors."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import UserError
from ..io import build_checked, load_pretrained, load_weights, save_pretrained


def save_discriminator(disc: nn.Module, directory, metrics: dict | None = None, dtype=None) -> None:
    """Weights, then config.json (a folder with a config always has its weights)."""
    save_pretrained(directory, {**disc.config(), "metrics": metrics or {}}, disc.state_dict(), dtype=dtype)


def read_discriminator(directory, kind: str, classes: dict[str, type], device="cpu") -> nn.Module:
    """The `kind` attribute model in `directory`, built by classes[kind] from its config.json."""
    d = Path(directory)
    if not (d / "config.json").is_file():
        raise UserError(f"no {kind} attribute model (config.json) in {d}")
    cfg, state = load_pretrained(d, f"{kind} attribute model")
    if cfg.get("kind") != kind:
        raise UserError(f"{d} holds a {cfg.get('kind')!r} model, not a {kind} attribute model")
    cfg.pop("kind"), cfg.pop("metrics", None)
    try:
        model = build_checked(lambda: classes[kind](**cfg), state, str(d))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise UserError(f"{d}/config.json does not describe a {kind} model: {e}") from None
    load_weights(model, state, str(d))
    return model.to(device).eval()
