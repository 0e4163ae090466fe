"""Classifier-free guidance (Ho & Salimans, 2022) as a wrapper of the model function.

One network is trained with the conditioning c dropped to a null value ∅ some of
the time; at sampling the two predictions are extrapolated,

    ε̂ = ε(x_t, t, ∅) + w · (ε(x_t, t, c) − ε(x_t, t, ∅)),

so w = 0 is the unconditional model, w = 1 the conditional one, and w > 1
trades diversity for fidelity to c. Any prediction kind (ε, x_0, v) is affine
in the others at fixed x_t, so the same extrapolation holds for all three.

The wrapper is what the sampler calls: `sample(ClassifierFreeGuidance(unet, w,
{"context": null_context}), ..., model_kwargs={"context": context})`. Both
halves go through the model in one batched forward of 2B rows; at w = 0 or 1 only the
half the result is made of runs (B rows, half the cost).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class ClassifierFreeGuidance:
    """model_fn(x_t, t, **model_kwargs) guided with scale w = `scale`.

    `null` maps each conditioning keyword of model_kwargs to its null value ∅,
    broadcastable to the conditioning's shape (e.g. a learned null embedding of
    shape (1, ...)); those keywords are replaced by ∅ in the unconditional half.
    Every other tensor keyword whose first dimension is the batch is repeated
    for both halves; anything else is passed unchanged.
    """

    model_fn: Callable[..., torch.Tensor]
    scale: float
    null: dict[str, Any]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        missing = sorted(set(self.null) - set(model_kwargs))
        if missing:
            raise ValueError(f"classifier-free guidance needs the conditioning {missing} in model_kwargs")
        if self.scale == 0 or self.scale == 1:  # one half is all there is: one pass, the same result
            if self.scale == 0:
                model_kwargs = {k: (torch.broadcast_to(torch.as_tensor(self.null[k], device=v.device, dtype=v.dtype),
                                                       v.shape) if k in self.null else v)
                                for k, v in model_kwargs.items()}
            return self.model_fn(x_t, t, **model_kwargs)
        B = x_t.shape[0]
        kwargs = {}
        for k, v in model_kwargs.items():
            if k in self.null:
                empty = torch.as_tensor(self.null[k], device=v.device, dtype=v.dtype)
                kwargs[k] = torch.cat([torch.broadcast_to(empty, v.shape), v])
            elif torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == B:
                kwargs[k] = torch.cat([v, v])
            else:
                kwargs[k] = v
        out = self.model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]), **kwargs)
        uncond, cond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)
