"""Classifier guidance as the sampling loop's step hook (Li et al. 2022, §5.2).

Modality-agnostic: x is any (B, ...) tensor and a classifier is anything with
`log_prob(x_t, t, target) -> (B,)`, the interface of `classifiers.base`.

After the sampler draws x_{t−1} ~ N(μ_θ(x_t, t), σ_t² I), the hook takes K
Adagrad steps on x_{t−1} that lower

    λ · Σ_c w_c · (−log p(c | x_{t−1}, t))  +  ‖x_{t−1} − μ‖² / (2σ_t²)

— the classifiers pull toward the targets, the Gaussian term keeps x_{t−1}
a plausible draw of the diffusion step (fluency). Several controls compose by
summing their terms. The last `skip_last` steps are left alone: σ_t is tiny
there and the clamped x_0 has settled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch



@dataclass
class Control:
    """One control: a classifier, a target per sample (or one for all), and its weight."""

    classifier: Any  # has log_prob(x_t, t, target) -> (B,), differentiable in x_t
    target: Any
    weight: float = 1.0
    t_range: Optional[tuple[int, int]] = None  # active only at training timesteps lo <= t <= hi (None: always)
    required: bool = True  # a target the finished sample must meet; False for a potential only to raise (fluency)

    def active(self, t: torch.Tensor) -> bool:
        if self.t_range is None:
            return True
        lo, hi = self.t_range
        return lo <= int(t.max()) <= hi


@dataclass
class GuidanceConfig:
    strength: Optional[float] = None  # λ; None is the caller's default (1 here; the text pipeline: the task's)
    updates: int = 3            # K Adagrad steps per diffusion step
    step_size: float = 0.1      # Adagrad learning rate
    skip_last: int = 1          # diffusion steps at the end without control
    every: int = 1              # guide one diffusion step in `every` (counted from the end); the others are plain


@dataclass
class ControlGuidance:
    """The step hook: call it as the sampler's `step_hook`."""

    controls: list[Control]
    config: GuidanceConfig = field(default_factory=GuidanceConfig)
    last_log_prob: torch.Tensor | None = None  # Σ_c w_c log p(c | x) after the last update (for plots)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor, controls: list[Control] | None = None) -> torch.Tensor:
        return sum(c.weight * c.classifier.log_prob(x, t, c.target) for c in (self.controls if controls is None
                                                                              else controls))

    @torch.no_grad()
    def met(self, x0: torch.Tensor) -> torch.Tensor:
        """(B,) bool: does each finished sample x0 meet the required controls whose classifier can check one (a
        `satisfied(x0, target) -> (B,) bool` method; text's semantic classifier has one)? Controls without a
        check are taken as met."""
        ok = torch.ones(len(x0), dtype=torch.bool, device=x0.device)
        for c in self.controls:
            if c.required and hasattr(c.classifier, "satisfied"):
                ok &= c.classifier.satisfied(x0, c.target)
        return ok

    def __call__(self, x_prev: torch.Tensor, *, x_t: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor,
                 t: torch.Tensor, index: int) -> torch.Tensor:
        cfg = self.config
        strength = 1.0 if cfg.strength is None else cfg.strength
        active = [c for c in self.controls if c.active(t)]
        if index < cfg.skip_last or index % cfg.every or cfg.updates <= 0 or strength == 0 or not active:
            return x_prev
        x = x_prev.detach().clone().requires_grad_(True)
        opt = torch.optim.Adagrad([x], lr=cfg.step_size)
        var = variance.clamp_min(1e-8)
        for _ in range(cfg.updates):
            opt.zero_grad(set_to_none=True)
            lp = self.log_prob(x, t, active)
            fluency = ((x - mean) ** 2 / (2 * var)).flatten(1).sum(1)
            (strength * -lp + fluency).sum().backward()
            opt.step()
        self.last_log_prob = lp.detach()  # before the last update: no extra classifier pass per step
        return x.detach()
