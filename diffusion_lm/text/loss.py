"""The end-to-end x_0 objective of Diffusion-LM (Li et al., 2022, eq. 3 with x_0-parameterisation).

    L(w) = E_t ‖f_θ(x_t, t) − x_0‖²            (t > 1)
         + ‖EMB(w) − f_θ(x_1, 1)‖²              (t = 1 replaces the term above)
         + ‖μ̂(x_T; x_0)‖²                       (prior: q(x_T | x_0) should be N(0, I))
         − log p_θ(w | x_0)                      (rounding)

with x_0 ~ N(EMB(w), σ_0² I), σ_0² = 1 − ᾱ_1, and EMB trained jointly.

`anchor_weight` adds − log p_θ(w | f_θ(x_t, t)) at every t (the "anchor" loss of
Gao et al., 2022, Difformer): it asks each x̂_0 to round to the right word,
which keeps embeddings apart and speeds up learning; 0 gives the paper's loss.
"""
from __future__ import annotations

import torch

from ..core import GaussianDiffusion
from .model import DiffusionLM
from .rounding import nearest_word_nll


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def loss_draws(batch: int, L: int, d: int, num_timesteps: int, generator: torch.Generator,
               self_condition_prob: float = 0.5) -> dict[str, torch.Tensor]:
    """Every random draw of `diffusion_lm_loss` for a batch, from one generator: the x_0 noise, the x_t
    noise, the self-conditioning coin flips (and t, when the caller does not choose it). A step's draws
    for the global batch, sliced per process, make a data-parallel run the one-process run."""
    return {"x0_noise": torch.randn(batch, L, d, generator=generator),
            "xt_noise": torch.randn(batch, L, d, generator=generator),
            "self_condition": torch.rand(batch, generator=generator) < self_condition_prob,
            "t": torch.randint(0, num_timesteps, (batch,), generator=generator)}


def diffusion_lm_loss(model: DiffusionLM, diffusion: GaussianDiffusion, ids: torch.Tensor,
                      anchor_weight: float = 0.0, self_condition_prob: float = 0.5, t: torch.Tensor | None = None,
                      per_example: bool = False, draws: dict[str, torch.Tensor] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Per-term means over the batch; `loss` is what to minimise.

    With `per_example`, also `t` and `signal`: each example's timestep and its denoising loss (the anchor
    cross-entropy when it is on, else the x_0 error), for a time-warping timestep sampler. `draws`
    (`loss_draws`) replaces the global RNG's draws (its coin flips carry their own probability, so
    `self_condition_prob` is then unused); `t`, when given, wins over draws["t"].
    """
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"diffusion_lm_loss(model, diffusion, ids, ...): got {type(diffusion).__name__} for diffusion")
    B = ids.shape[0]
    emb = model.embed(ids)
    dev = ids.device
    x0_noise = torch.randn_like(emb) if draws is None else draws["x0_noise"].to(dev, emb.dtype)
    x0 = emb + float(diffusion.sqrt_one_minus_alpha_bar[0]) * x0_noise
    if t is None:
        t = torch.randint(0, diffusion.num_timesteps, (B,), device=dev) if draws is None else draws["t"].to(dev)
    x_t = diffusion.q_sample(x0, t, None if draws is None else draws["xt_noise"].to(dev, emb.dtype))

    x0_prev = None
    if model.config.self_condition:
        # Half the batch learns to use its own earlier estimate, as at sampling time.
        x0_prev = torch.zeros_like(x_t)
        use = torch.rand(B, device=dev) < self_condition_prob if draws is None else draws["self_condition"].to(dev)
        if use.any():
            with torch.no_grad():
                x0_prev[use] = model(x_t[use], t[use]).detach()

    pred = model(x_t, t, x0_prev)
    mse = torch.where(t == 0, _mean_flat((pred - emb) ** 2), _mean_flat((pred - x0) ** 2))
    t_last = torch.full_like(t, diffusion.num_timesteps - 1)
    prior_mean, _ = diffusion.q_mean_variance(x0, t_last)
    prior = _mean_flat(prior_mean**2)
    if anchor_weight:  # both cross-entropies in one pass over the vocabulary
        rounding, anchor = _word_nll(model, torch.stack([x0, pred]), ids.expand(2, -1, -1)).unbind(0)
    else:
        rounding = _word_nll(model, x0, ids)
    terms = {"mse": mse.mean(), "prior": prior.mean(), "rounding": rounding.mean()}
    loss = mse + prior + rounding
    if anchor_weight:
        terms["anchor"] = anchor.mean()
        loss = loss + anchor_weight * anchor
    terms["loss"] = loss.mean()
    if per_example:
        terms["t"] = t
        terms["signal"] = (anchor if anchor_weight else mse).detach()
    return terms


def _word_nll(model: DiffusionLM, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean −log p_θ(w | x) over each sentence's positions: x (..., L, d), ids (..., L) → (...)."""
    return nearest_word_nll(x, model.embedding.weight, ids).mean(-1)
