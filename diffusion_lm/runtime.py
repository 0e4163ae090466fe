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
