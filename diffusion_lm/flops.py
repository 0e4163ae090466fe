"""Counting a training step's FLOPs (for `scripts/bench_train.py`).

torch's FlopCounterMode counts matmuls and the GPU attention kernels, but not the fused attention
kernel that scaled_dot_product_attention runs on a CPU, so a CPU step's attention would count as
free. `flop_counter()` adds that kernel. Counts are model FLOPs: the backward is the four matmuls
that give dQ, dK, dV and dP (twice the forward's q·kᵀ and p·v), without the q·kᵀ the flash kernel
recomputes to save memory. (`text/rounding.py` computes its bias gradient with a matrix-vector
product, which the counter does not see, and so counts exactly the plain version's three matmuls:
tests/test_flops.py checks both.)
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flop_count(query, key, value)


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode (display off) that also counts the CPU fused-attention kernels."""
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
    })
