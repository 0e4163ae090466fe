"""Which training timesteps to draw: uniformly, or "time-warped" toward where the model is learning.

Uniform t spends much of every batch where the task is trivial (t near 0, every word recoverable) or
hopeless (t near T, nothing but the prior left). Time warping (Dieleman et al., 2022, "Continuous
diffusion for categorical data", CDCD) keeps a running estimate of a loss ℓ(t) that rises with t and
draws t with density proportional to its slope dℓ/dt, so that equal shares of the batch go to equal
rises of the loss. We estimate ℓ on `buckets` equal slices of [0, T) (40 by default) by an exponential moving average,
make it non-decreasing (a running maximum), and mix the slope-proportional density with a uniform one
(`uniform_mix`) so no slice is ever starved. Draws stay uniform until every slice has been seen.
The loss is not reweighted: this changes where the model practises, not what it is asked to learn.
"""
from __future__ import annotations

import torch


class TimestepSampler:
    def __init__(self, num_timesteps: int, mode: str = "uniform", buckets: int | None = None,
                 uniform_mix: float = 0.2, decay: float = 0.98):
        if buckets is None:  # slices of at least 25 steps, at most 40 of them (50 steps each for T = 2000)
            buckets = min(40, max(1, num_timesteps // 25))
        if mode not in ("uniform", "warped"):
            raise ValueError(f"unknown timestep sampling {mode!r}; choose uniform or warped")
        if not 1 <= buckets <= num_timesteps:
            raise ValueError(f"buckets must be in [1, {num_timesteps}], got {buckets}")
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        self.T, self.mode, self.mix, self.decay = num_timesteps, mode, uniform_mix, decay
        self.edges = torch.linspace(0, num_timesteps, buckets + 1).round().long()
        self.loss = torch.zeros(buckets)  # EMA of the loss in each slice
        self.seen = torch.zeros(buckets, dtype=torch.bool)

    def bucket(self, t: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(t.cpu(), self.edges[1:], right=True)

    def probabilities(self) -> torch.Tensor:
        """The probability of each slice (uniform until every slice has a loss estimate)."""
        widths = (self.edges[1:] - self.edges[:-1]).float()
        uniform = widths / widths.sum()
        if self.mode == "uniform" or not bool(self.seen.all()):
            return uniform
        curve = torch.cummax(self.loss, 0).values
        rise = torch.diff(curve, prepend=curve.new_zeros(1)).clamp_min(0)
        if float(rise.sum()) <= 0:
            return uniform
        return (1 - self.mix) * rise / rise.sum() + self.mix * uniform

    def sample(self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """`batch` timesteps; from `generator` when given (else the global RNG, on `device` for uniform)."""
        if self.mode == "uniform":  # the plain draw (the same random stream as before this class existed)
            if generator is not None:
                return torch.randint(0, self.T, (batch,), generator=generator).to(device)
            return torch.randint(0, self.T, (batch,), device=device)
        b = torch.multinomial(self.probabilities(), batch, replacement=True, generator=generator)
        lo, hi = self.edges[b], self.edges[b + 1]
        t = lo + (torch.rand(batch, generator=generator) * (hi - lo).float()).long().clamp_max(hi - lo - 1)
        return t.to(device)

    @torch.no_grad()
    def update(self, t: torch.Tensor, loss: torch.Tensor) -> None:
        """Fold per-example losses at timesteps `t` into the running estimate."""
        b = self.bucket(t)
        loss = loss.detach().float().cpu()
        for k in b.unique().tolist():
            mean = loss[b == k].mean()
            self.loss[k] = mean if not self.seen[k] else self.decay * self.loss[k] + (1 - self.decay) * mean
            self.seen[k] = True

    # checkpoint round trip (plain tensors, so it rides in the safetensors state)
    def state(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.clone(), "seen": self.seen.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state["loss"].shape != self.loss.shape:
            raise ValueError(f"timestep sampler state has {len(state['loss'])} buckets, expected {len(self.loss)}")
        self.loss.copy_(state["loss"])
        self.seen.copy_(state["seen"].bool())
