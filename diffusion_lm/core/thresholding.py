"""x̂_0 transforms that keep predictions inside the data's range, for the sampler's `x0_transform`.

Static clipping clamps x̂_0 to [−limit, limit]. Dynamic thresholding (Saharia et
al., 2022, Imagen) adapts the limit to each sample: with s the p-quantile of
|x̂_0| over the sample's elements and s ← max(s, 1),

    x̂_0 ← clip(x̂_0, −s, s) / s,

so saturated pixels are pushed inward rather than flattened at ±1, which keeps
high classifier-free guidance scales from washing the image out. A sample
already inside [−1, 1] has s = 1 and is left exactly as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DynamicThreshold:
    """Imagen's dynamic thresholding; `quantile` is p (0.995 is the 99.5th percentile)."""

    quantile: float = 0.995

    def __post_init__(self):
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"dynamic thresholding quantile must be in (0, 1], got {self.quantile}")

    def __call__(self, x0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        flat = x0.detach().abs().flatten(1).to(torch.float32 if x0.dtype in (torch.float16, torch.bfloat16)
                                               else x0.dtype)
        s = torch.quantile(flat, self.quantile, dim=1).clamp_min(1.0).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.dim() - 1)))
        return x0.clamp(-s, s) / s


@dataclass
class StaticThreshold:
    """Clamp x̂_0 to [−limit, limit] (DDPM's clipping of the predicted image)."""

    limit: float = 1.0

    def __post_init__(self):
        if not self.limit > 0:
            raise ValueError(f"static clipping limit must be > 0, got {self.limit}")

    def __call__(self, x0: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return x0.clamp(-self.limit, self.limit)
