"""Configs for every command and script: hydra composition from conf/, dataclass sections, one-line errors.

Configs are composed with hydra's compose API from conf/ (shipped inside the package as
diffusion_lm/conf). A section names its dataclass with `_target_`; `build` fills and type-checks it,
so a wrong type fails in one line. `user_message` is the one place that decides whether an error
was the user's (one line, exit 2) or a bug (a traceback).
"""
from __future__ import annotations

import errno
import importlib
from dataclasses import dataclass, field, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from .errors import UserError


# ---- the commands' top-level keys, as hydra structured configs ----------------------------
# Each conf/<command>.yaml lists its schema first in its defaults, so hydra itself rejects a wrong
# type (`seed=null`, `n=abc`, `limit=1.5`) before any handler runs. Sections with a `_target_`
# (sample, guidance, model, optim, ...) are typed by their own dataclasses in `build`.
@dataclass
class GenerateSchema:
    checkpoint: str = "shipped"
    task: str = "pos"
    target: Any = None
    targets: Optional[str] = None
    limit: Optional[int] = None
    n: int = 1
    select: int = 1
    seed: int = 0
    batch_size: int = 50
    system: str = "diffusion-lm"
    output: Optional[str] = None
    trajectory: Optional[str] = None
    left: str = ""
    right: str = ""
    middle: int = 8
    device: str = "auto"
    classifiers: Dict[str, str] = field(default_factory=dict)
    length_shape: bool = True
    shard: Optional[str] = None
    lm_guidance: float = 0.0
    lm_rerank: float = 0.0
    lm_guidance_t: Any = None
    fluency_lm: str = "shipped"
    guidance: Any = None
    sample: Any = None


@dataclass
class SampleSchema:
    checkpoint: str = "shipped"
    n: int = 20
    seed: int = 0
    batch_size: int = 64
    mbr: int = 1
    select: int = 1
    lm_guidance: float = 0.0
    lm_rerank: float = 0.0
    lm_guidance_t: Any = None
    fluency_lm: str = "shipped"
    output: Optional[str] = None
    device: str = "auto"
    trajectory: Optional[str] = None
    guidance: Any = None
    sample: Any = None


@dataclass
class BaselineSchema:
    method: str = "fudge"
    task: str = "semantic"
    target: Any = None
    targets: Optional[str] = None
    limit: Optional[int] = None
    n: int = 1
    seed: int = 0
    batch_size: int = 50
    system: Optional[str] = None
    output: Optional[str] = None
    lm: str = "shipped"
    attribute_model: str = "shipped"
    device: str = "auto"
    shard: Optional[str] = None
    fudge: Any = None
    pplm: Any = None


@dataclass
class EvaluateSchema:
    generations: Any = field(default_factory=list)  # a list of JSONL files (or one)
    targets: str = "shipped"
    teacher: str = "shipped"
    parser: str = "shipped"
    throughput: Optional[str] = None
    honesty_rows: bool = True
    out_dir: str = "runs/eval"


@dataclass
class BuildTargetsSchema:
    out_dir: str = "runs/targets"
    n: int = 200
    seed: int = 0
    parser: str = "shipped"
    data: Any = None


@dataclass
class TrainClassifierSchema:
    task: str = "pos"
    checkpoint: str = "shipped"
    out_dir: str = "runs/classifiers/pos"
    encoder: Any = None
    optim: Any = None


@dataclass
class TrainBaselineSchema:
    method: str = "fudge"
    lm: str = "shipped"
    out_dir: str = "runs/fudge"
    fudge: Any = None
    pplm: Any = None


SCHEMAS = {"generate_schema": GenerateSchema, "sample_schema": SampleSchema, "baseline_schema": BaselineSchema,
           "evaluate_schema": EvaluateSchema, "build_targets_schema": BuildTargetsSchema,
           "train_classifier_schema": TrainClassifierSchema, "train_baseline_schema": TrainBaselineSchema}


def _register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=name, node=node)


def config_dir() -> str:
    """conf/ of the source tree, or the copy installed inside the package."""
    here = Path(__file__).resolve().parents[1] / "conf"
    if here.is_dir():
        return str(here)
    return str(resources.files("diffusion_lm") / "conf")


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    _register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=overrides)
        except (ValueError, TypeError, KeyError) as e:  # hydra lets a few override mistakes out as plain errors
            if type(e).__module__.startswith(("hydra", "omegaconf")):
                raise
            raise UserError(f"bad overrides: {one_line(e)}") from None


def one_line(e: BaseException) -> str:
    """The first meaningful line of an error, with hydra's option lists folded in."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0]
    if "Available options" in text:
        after = lines[[i for i, ln in enumerate(lines) if "Available options" in ln][0] + 1:]
        opts = [ln for ln in after if "=" not in ln and not ln.endswith(":")]
        first += f" (available: {', '.join(opts)})"
    return first


# OSErrors that say the machine cannot take the output (disk full, read-only, no permission, quota)
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG,
                                 errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG})


def user_message(e: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input (a UserError, or hydra / omegaconf
    failing to compose or instantiate a config); None for a bug, which should keep its traceback."""
    if isinstance(e, UserError):
        return one_line(e)
    if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:  # the disk or the folder, not our code
        where = f": {e.filename}" if e.filename else ""
        return f"{e.strerror or one_line(e)}{where}"
    if type(e).__module__.startswith(("hydra", "omegaconf")):
        cause = e.__cause__
        if cause is not None and "instantiate" in one_line(e):
            return one_line(cause)
        message = one_line(e).rstrip(".")
        if cause is not None and type(cause).__module__.startswith("omegaconf"):  # say which key and why
            key = getattr(cause, "full_key", None)
            reason = one_line(cause)
            named = not key or f"'{key}'" in reason or reason.startswith(f"{key}:")
            message += f": {reason}" if named else f": {key}: {reason}"
        return message
    return None


def _config_class(key: str, path) -> type:
    """The config dataclass a section's `_target_` names: one of this package's, nothing else is imported."""
    if not isinstance(path, str) or not path.startswith(("diffusion_lm.", "classifiers.")):
        raise UserError(f"bad {key} config: {key}._target_ must name one of diffusion_lm's config classes, got {path!r}")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"bad {key} config: {key}._target_ {path!r} names no class") from None
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise UserError(f"bad {key} config: {key}._target_ {path!r} is not a config class")
    return cls


def build(cfg: DictConfig, key: str):
    """The dataclass named by a section's `_target_`, filled and type-checked from the section.

    Merging into `OmegaConf.structured` checks every value against the field's
    type, so `model.hidden=abc` fails here, in one line, not deep in training.
    """
    section = cfg[key]
    if not OmegaConf.is_dict(section) or "_target_" not in section:
        raise UserError(f"bad {key} config: {key} must be a section of keys (e.g. {key}.<key>=<value>), "
                        f"got {OmegaConf.to_container(section) if OmegaConf.is_config(section) else section!r:.80}")
    try:
        section = OmegaConf.to_container(section, resolve=True)
        cls = _config_class(key, section.pop("_target_"))
        nested = {k: v for k, v in section.items() if isinstance(v, dict) and "_target_" in v}
        merged = OmegaConf.merge(OmegaConf.structured(cls), {k: v for k, v in section.items() if k not in nested})
        obj = OmegaConf.to_object(merged)
    except UserError:
        raise
    except Exception as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        where = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise UserError(f"bad {key} config: {f'{key}.{where}: ' if where else ''}{msg}") from None
    for k in nested:
        setattr(obj, k, build(OmegaConf.create({k: nested[k]}), k))
    return obj


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


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


def container(value):
    """A config value as plain Python (lists and dicts out of OmegaConf's containers)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
