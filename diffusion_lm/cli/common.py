"""Helpers shared by the command handlers."""
from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError


def build(cfg: DictConfig, key: str):
    """The dataclass named by a section's `_target_`, filled and type-checked from the section.

    Merging into `OmegaConf.structured` checks every value against the field's
    type, so `model.hidden=abc` fails here, in one line, not deep in training.
    """
    section = OmegaConf.to_container(cfg[key], resolve=True)
    try:
        cls = get_class(section.pop("_target_"))
        nested = {k: v for k, v in section.items() if isinstance(v, dict) and "_target_" in v}
        merged = OmegaConf.merge(OmegaConf.structured(cls), {k: v for k, v in section.items() if k not in nested})
        obj = OmegaConf.to_object(merged)
    except Exception as e:
        msg = str(e).splitlines()[0]
        where = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise UserError(f"bad {key} config: {f'{key}.{where}: ' if where else ''}{msg}") from None
    for k in nested:
        setattr(obj, k, build(OmegaConf.create({k: nested[k]}), k))
    return obj


def resolve_checkpoint(name: str) -> str:
    """`shipped` (or `shipped:<name>`) names a model inside the package; anything else is a folder."""
    if name == "shipped" or name.startswith("shipped:"):
        from importlib import resources

        model = name.partition(":")[2] or "diffusion-lm-cpu"
        path = resources.files("diffusion_lm") / "assets" / "models" / model
        if not path.is_dir():
            raise UserError(f"no shipped model named {model!r} (looked in {path})")
        return str(path)
    return name


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


SHIPPED_ASSETS = {"targets": "targets", "teacher": "models/teacher-lm", "parser": "models/parser-wsj-charlstm"}


def resolve_asset(value: str, kind: str) -> str:
    """`shipped` names the package's own targets / teacher / parser; anything else passes through."""
    if value != "shipped":
        return value
    from importlib import resources

    path = resources.files("diffusion_lm") / "assets" / SHIPPED_ASSETS[kind]
    if not path.is_dir():
        raise UserError(f"no shipped {kind} in this installation (looked in {path}); build one and pass its folder")
    return str(path)
