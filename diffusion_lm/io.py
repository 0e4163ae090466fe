"""Files on disk for every model and modality: atomic writes, JSON, safetensors, JSONL.

Nothing here uses pickle. A file appears under its final name only when it is
complete (written to a temporary name in the same folder, then `os.replace`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), then move tmp_path onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=metadata))


def load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def load_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict with a one-line error naming the first mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise UserError(f"{where}: weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(f"{where}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)


# ---- JSONL ----------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, what: str = "file") -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line; anything else is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object")
        rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


# ---- the save_pretrained / from_pretrained protocol ----------------------------------------
# A model folder is config.json (the model's config dataclass, plus whatever the model adds) and
# model.safetensors, and for shipped models manifest.json (command, commit, metrics). Weights are
# written first, then config.json: a folder with a config always has its weights. HF models
# (the GPT-2 LMs) keep HF's own format.
def save_pretrained(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor], *,
                    manifest: dict | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write `state_dict` (floating tensors cast to `dtype` when given) and `config` into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()}
    save_tensors(d / "model.safetensors", state, {"format": "pt"})
    save_json(d / "config.json", config)
    if manifest is not None:
        save_json(d / "manifest.json", manifest)
    return d


def load_pretrained(directory: str | os.PathLike, what: str = "model") -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and the float32 weights of a folder written by `save_pretrained`."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{what} folder not found: {d}")
    config = load_json(d / "config.json")
    if not isinstance(config, dict):
        raise UserError(f"{d / 'config.json'} must hold a JSON object, not {type(config).__name__}")
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_tensors(d / "model.safetensors").items()}
    return config, tensors


def config_from_dict(cls, d: dict, where: str):
    """The dataclass `cls` from a dict read off disk: unknown keys and wrong types are one-line UserErrors."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} keys {unknown}")
    for k, v in d.items():
        want = known[k].type if isinstance(known[k].type, str) else getattr(known[k].type, "__name__", "")
        if want in ("int", "bool", "float", "str") and v is not None:
            ok = {"int": isinstance(v, int) and not isinstance(v, bool), "bool": isinstance(v, bool),
                  "float": isinstance(v, (int, float)) and not isinstance(v, bool), "str": isinstance(v, str)}[want]
            if not ok:
                raise UserError(f"{where}: {k} must be {want}, got {v!r}")
    return cls(**d)


def config_to_dict(config) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)
