"""Shipped assets: what `shipped`, `shipped:<name>` or a folder name, for every kind of input.

The package carries its trained models, control targets and NLTK data under `assets/`, so
everything runs offline. A value that is not `shipped...` is passed through as a path.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import UserError

# kind -> the folder under assets/ that `shipped` names; {name} is filled from `shipped:<name>` or the default
_FOLDERS = {
    "checkpoint": "models/{name}",
    "model": "models/{name}",
    "classifier": "models/classifier-{name}",
    "targets": "targets",
    "teacher": "models/teacher-lm",
    "parser": "models/parser-wsj-charlstm",
}
DEFAULT_CHECKPOINT = "diffusion-lm-cpu-frozen"  # diffusion-lm-cpu continued, embeddings frozen


def assets_dir() -> Path:
    return Path(str(resources.files("diffusion_lm") / "assets"))


def use_shipped_nltk_data() -> str:
    """Put the shipped nltk_data (treebank sample, tagger, universal-tagset map) on nltk's search path."""
    import nltk  # heavy: only where NLTK data is read

    path = str(assets_dir() / "nltk_data")
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)
    return path


def is_shipped(value) -> bool:
    return isinstance(value, str) and (value == "shipped" or value.startswith("shipped:"))


def resolve(value: str, kind: str, name: str | None = None) -> str:
    """The folder `value` names: `shipped` (the default `name` of `kind`), `shipped:<name>`, or a path.

    kind: checkpoint (a Diffusion-LM; default the cpu preset's), model (any shipped model folder),
    classifier (`name` = pos | tree | semantic), targets, teacher or parser.
    """
    if not is_shipped(value):
        return value
    if kind not in _FOLDERS:
        raise ValueError(f"unknown asset kind {kind!r}")
    chosen = value.partition(":")[2] or name or (DEFAULT_CHECKPOINT if kind == "checkpoint" else None)
    path = assets_dir() / _FOLDERS[kind].format(name=chosen)
    if not path.is_dir():
        what = {"model": f"model named {chosen!r}", "checkpoint": f"model named {chosen!r}",
                "classifier": f"{chosen} classifier"}.get(kind, kind)
        raise UserError(f"no shipped {what} in this installation (looked in {path}); build one and pass its folder")
    return str(path)


def resolve_checkpoint(value: str) -> str:
    """A Diffusion-LM folder: `shipped` (the cpu preset's model), `shipped:<name>`, or a path."""
    return resolve(value, "checkpoint")


def resolve_asset(value: str, kind: str, name: str | None = None) -> str:
    """`shipped` names the package's own targets / teacher / parser (or model / classifier `name`)."""
    return resolve(value, kind, name)
