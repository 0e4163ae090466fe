"""Files on disk for every model and modality: atomic writes, JSON, safetensors, JSONL.

Nothing here uses pickle. A file appears under its final name only when it is
complete (written to a temporary name in the same folder, then `os.replace`).
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from dataclasses import MISSING, asdict, fields, is_dataclass
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


_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # atomic_write's temporary names: .<name>.<random>.tmp


def remove_stale_temps(directory, name: str | None = None) -> list[Path]:
    """Delete the temporary files a killed atomic_write left in `directory` (only those of `name`, where
    given). Call it when a command that owns those files starts, before it writes them again."""
    d = Path(directory)
    if not d.is_dir():
        return []
    gone = []
    for p in d.glob(f".{glob.escape(name)}.*.tmp" if name else ".*.tmp"):
        if _TEMP.fullmatch(p.name) and p.is_file():
            try:
                p.unlink()
                gone.append(p)
            except FileNotFoundError:
                pass
    return gone


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in `folder` (read-only, no permission), or None."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-check.", suffix=".tmp")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.remove(tmp)
    return None


def check_output_file(path, key: str) -> None:
    """Before any work: a one-line UserError unless a file can be written at `path` (a key's value)."""
    if path is None or path == "":  # no output asked for
        return
    p = Path(str(path))
    if not str(path).strip():
        raise UserError(f"{key} is empty; give a file name")
    if p.is_dir():
        raise UserError(f"{key}={path} is a folder; give a file name")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise UserError(f"{key}={path}: {base} is a file, not a folder")
    why = _cannot_write_in(base)
    if why:
        raise UserError(f"{key}={path}: cannot write in {base} ({why})")
    remove_stale_temps(p.parent, p.name)  # left by a run killed while writing this file


def check_output_dir(path, key: str) -> None:
    """Before any work: a one-line UserError unless `path` is, or can become, a writable folder."""
    p = Path(str(path))
    if not str(path).strip():
        raise UserError(f"{key} is empty; give a folder")
    if p.exists() and not p.is_dir():
        raise UserError(f"{key}={path} is a file, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{key}={path}: {base} is a file, not a folder")
    why = _cannot_write_in(base)
    if why:
        raise UserError(f"{key}={path}: cannot write in {base} ({why})")
    remove_stale_temps(p)  # left by a run killed while writing into this folder


def save_json(path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=metadata))


MAX_JSON_DEPTH = 100  # deeper JSON is no config or row of ours; refused before anything recurses into it


def read_text(path, what: str = "file") -> str:
    """A UTF-8 text file, or a one-line UserError (not UTF-8, unreadable)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion to overflow)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def parse_json(text: str, where: str):
    """json.loads with every failure as a one-line UserError naming `where` (a file, or file:line)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise UserError(f"{where} is not usable JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{where} is not usable JSON ({(str(e).splitlines() or [type(e).__name__])[0][:100]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise UserError(f"{where} is not usable JSON (nested more than {MAX_JSON_DEPTH} levels deep)")
    return value


def load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    return parse_json(read_text(path, "file"), str(path))


def load_tensors(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"cannot read {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """A one-line UserError naming the first floating tensor with a NaN or an infinity (corrupt weights)."""
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{where}: weight {k} holds NaN or infinite values; the file is corrupt")


def build_checked(build, state: dict[str, torch.Tensor], where: str):
    """build() once on the meta device (no memory) to check `state`'s names and shapes, then for real:
    a config that disagrees with its weights (a size edited or damaged) fails before anything is allocated."""
    with torch.device("meta"):
        check_weights(build(), state, where)
    return build()


def check_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """A one-line UserError naming the first weight missing, unexpected or of the wrong shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise UserError(f"{where}: weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(f"{where}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict with a one-line error naming the first mismatch (or non-finite weight)."""
    check_weights(model, state, where)
    check_finite(state, where)
    model.load_state_dict(state)


# ---- JSONL ----------------------------------------------------------------------------------
def read_jsonl(path: str | os.PathLike, what: str = "file", allow_empty: bool = True) -> list[dict]:
    """The JSON objects of a JSONL file, one per non-blank line; anything else is a one-line UserError
    (not UTF-8, a line that is not a JSON object, nesting too deep; no rows at all unless allow_empty)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{path}:{n}: not usable JSON (nested too deeply)") from None
        except ValueError as e:  # e.g. an integer with more digits than Python converts
            raise UserError(f"{path}:{n}: not usable JSON ({(str(e).splitlines() or [type(e).__name__])[0][:100]})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{n}: expected a JSON object")
        if _depth(row) > MAX_JSON_DEPTH:
            raise UserError(f"{path}:{n}: not usable JSON (nested more than {MAX_JSON_DEPTH} levels deep)")
        rows.append(row)
    if not rows and not allow_empty:
        raise UserError(f"{what} {path} has no rows")
    return rows


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


# ---- the save_pretrained / from_pretrained protocol ----------------------------------------
# A model folder is config.json (the model's config dataclass, plus whatever the model adds) and
# model.safetensors, and for shipped models manifest.json (command, commit, metrics). Weights are
# written first, then config.json: a folder with a config always has its weights. HF models
# (the GPT-2 LMs) keep HF's own format.
INT8_SCALE = "@int8_scale"  # suffix of a quantised weight's per-output-channel scales (no module name holds '@')
INT8_MIN_SIZE = 1024  # smaller tensors (biases, norms) stay floating


def quantize_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Symmetric per-output-channel int8 of every floating weight with >= 2 dims and >= INT8_MIN_SIZE
    values: q = round(w / s), s = max|w| over the channel / 127 (stored as `<key>@int8_scale`, float32),
    so each value is off by at most s / 2. Other tensors are kept as float16."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if not v.is_floating_point():
            out[k] = v
        elif v.dim() >= 2 and v.numel() >= INT8_MIN_SIZE:
            scale = v.float().flatten(1).abs().amax(1).clamp_min(1e-12) / 127
            out[k] = (v.float() / scale.view(-1, *[1] * (v.dim() - 1))).round().clamp(-127, 127).to(torch.int8)
            out[k + INT8_SCALE] = scale
        else:
            out[k] = v.to(torch.float16)
    return out


def dequantize_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of `quantize_int8`'s output (a state without scales passes through)."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = tensors.get(k + INT8_SCALE)
        if scale is None and v.dtype == torch.int8:
            raise UserError(f"weight {k} is int8 without its scales (the file is corrupt)")
        if scale is not None:
            if v.dtype != torch.int8 or scale.dim() != 1 or v.dim() < 1 or scale.numel() != v.shape[0]:
                raise UserError(f"weight {k}: its int8 scales do not fit it (the file is corrupt)")
            v = v.float() * scale.float().view(-1, *[1] * (v.dim() - 1))
        out[k] = v
    return out


def save_pretrained(directory: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor], *,
                    manifest: dict | None = None, dtype: torch.dtype | str | None = None) -> Path:
    """Write `state_dict` and `config` into `directory`. `dtype` shrinks the file: a floating dtype casts
    every floating tensor; "int8" quantises the weights per output channel (`quantize_int8`).
    `load_pretrained` gives float32 back either way."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if dtype == "int8":
        state = quantize_int8(state_dict)
    elif dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()}
    else:
        raise ValueError(f"save_pretrained: dtype must be a floating torch dtype or 'int8', got {dtype!r}")
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
    try:
        tensors = dequantize_int8(load_tensors(d / "model.safetensors"))
    except UserError as e:
        raise UserError(f"{d / 'model.safetensors'}: {e}") from None
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return config, tensors


def load_model(model_cls, config_cls, directory: str | os.PathLike, what: str, device="cpu"):
    """A model whose folder is its config dataclass's fields + weights: model_cls(config) with them loaded,
    on `device`, in eval mode; every defect (missing folder, unknown key, wrong shape) a one-line UserError."""
    raw, state = load_pretrained(directory, what)
    model = model_cls(config_from_dict(config_cls, raw, str(Path(directory) / "config.json")))
    load_weights(model, state, str(directory))
    return model.to(device).eval()


def config_from_dict(cls, d: dict, where: str):
    """The dataclass `cls` from a dict read off disk: unknown keys and wrong types are one-line UserErrors."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object for {cls.__name__}, got {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} keys {unknown}")
    missing = sorted(k for k, f in known.items() if k not in d and f.default is MISSING and f.default_factory is MISSING)
    if missing:
        raise UserError(f"{where}: missing {cls.__name__} keys {missing}")
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
