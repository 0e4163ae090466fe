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
    """`shipped` (or `shipped:<name>`) names a Diffusion-LM inside the package; anything else is a folder."""
    if name == "shipped" or name.startswith("shipped:"):
        return resolve_asset("shipped", "model", name.partition(":")[2] or "diffusion-lm-cpu")
    return name


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


SHIPPED_ASSETS = {"targets": "targets", "teacher": "models/teacher-lm", "parser": "models/parser-wsj-charlstm"}


def resolve_asset(value: str, kind: str, model: str | None = None) -> str:
    """`shipped` names the package's own targets / teacher / parser (or model / classifier <name>); else passes through."""
    if value != "shipped":
        return value
    from importlib import resources

    if kind == "classifier":
        sub = f"models/classifier-{model}"
    else:
        sub = f"models/{model}" if kind == "model" else SHIPPED_ASSETS[kind]
    path = resources.files("diffusion_lm") / "assets" / sub
    if not path.is_dir():
        what = {"model": f"model named {model!r}", "classifier": f"{model} classifier"}.get(kind, kind)
        raise UserError(f"no shipped {what} in this installation (looked in {path}); build one and pass its folder")
    return str(path)


def integer(cfg: DictConfig, key: str, minimum: int | None = None) -> int | None:
    """A top-level integer setting (None stays None), or a one-line UserError naming the key."""
    value = cfg[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise UserError(f"{key} must be an integer, got {value!r}")
    if minimum is not None and int(value) < minimum:
        raise UserError(f"{key} must be at least {minimum}, got {value}")
    return int(value)
