"""The one interface between control classifiers and the sampling loop."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ControlClassifier(Protocol):
    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target: Any) -> torch.Tensor:
        """log p(target | x_t, t) for each sample: (B, L, d) latents, (B,) training steps → (B,).

        Must be differentiable in x_t: control takes gradient steps on x_{t−1}.
        """
        ...
