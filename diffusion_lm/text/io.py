"""Saving and loading: config.json + model.safetensors + tokenizer.json, written atomically.

Nothing here uses pickle. A file appears under its final name only when it is
complete (written to a temporary name in the same folder, then `os.replace`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .model import DiffusionLM, DiffusionLMConfig
from .tokenizer import WordTokenizer


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


def config_from_dict(d: dict) -> DiffusionLMConfig:
    known = {f.name for f in fields(DiffusionLMConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown model config keys {unknown}")
    return DiffusionLMConfig(**d)


def save_pretrained(model: DiffusionLM, tokenizer: WordTokenizer | None, directory,
                    state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write a model folder. `state_dict` overrides the weights (e.g. the EMA copy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / "model.safetensors", state_dict or model.state_dict(), {"format": "pt"})
    if tokenizer is not None:
        atomic_write(directory / "tokenizer.json", lambda p: tokenizer.tok.save(p))
    save_json(directory / "config.json", model.config_dict())


def from_pretrained(directory, device: str | torch.device = "cpu") -> tuple[DiffusionLM, WordTokenizer]:
    """Load a model folder; fails with a UserError on any mismatch."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint folder not found: {directory}")
    config = config_from_dict(load_json(directory / "config.json"))
    tokenizer = WordTokenizer.load(directory)
    if len(tokenizer) != config.vocab_size:
        raise UserError(f"{directory}: tokenizer has {len(tokenizer)} words but the model expects {config.vocab_size}")
    model = DiffusionLM(config)
    load_weights(model, load_tensors(directory / "model.safetensors"), str(directory))
    return model.to(device).eval(), tokenizer


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
