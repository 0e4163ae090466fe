"""Process-level settings that make long CPU runs faster.

A training step allocates and frees the same few-megabyte activations every time. glibc's
malloc hands blocks of that size back to the kernel on free (mmap'd blocks, and a trimmed heap
top), so the next step page-faults them in again: about 20,000 minor faults a step for the `cpu`
preset, 8-15% of its time here. Raising the mmap and trim thresholds keeps the memory in the
process for reuse. Only glibc (Linux) has these knobs; elsewhere this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc malloc to keep freed blocks up to `mmap_threshold` bytes; True when it took effect."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    _done = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _done


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the parameters' device (CPU since 2.4).

    The fused kernel updates each tensor in one pass; the default multi-tensor step makes a dozen
    passes over the parameters and its moments, which shows on a small model's short steps.
    """
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # older torch: fused only on GPUs
        return torch.optim.AdamW(params, **kwargs)


DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str, key: str = "device") -> torch.device:
    """`device=` of any command: auto (CUDA when available), cpu or cuda (under torchrun, the rank's GPU,
    which diffusion_lm.distributed.setup made current); anything else is a one-line UserError."""
    from .errors import UserError

    if name not in DEVICES:
        raise UserError(f"unknown {key} {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key}=cuda but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device, key: str = "precision") -> str:
    """fp32 or bf16 for a run on `device`: auto is bf16 autocast on a GPU and fp32 on the CPU, whose bf16
    matmuls are about 100x slower than fp32 here; bf16 asked for on the CPU is refused in one line."""
    from .errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"unknown {key} {precision!r}; choose auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise UserError(f"{key}=bf16 needs a CUDA device; on the CPU training runs in fp32 (bf16 is ~100x slower there)")
    return precision


def allow_tf32(device: torch.device) -> None:
    """On a GPU, let fp32 matmuls and convolutions run as TF32 on the tensor cores (Ampere and later)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(precision: str, device: torch.device):
    """The context a training step's forward pass runs in: bf16 autocast on a GPU, nothing for fp32."""
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
