"""The one sampling loop, shared by every modality.

`sample` runs one of the step rules in `SAMPLERS` (ancestral DDPM, DDIM) over a
(possibly respaced) process. Each step:

    x̂_0 = transform(predict_x0(model(x_t, t, **model_kwargs)))   # x0_transform hook
    μ, σ² = SAMPLERS[sampler](diffusion, x̂_0, x_t, t, eta, variance)
    x_{t−1} = μ + σ z
    x_{t−1} = step_hook(x_{t−1}, x_t, μ, σ², t)           # guidance hook
    x_{t−1}[known] = known values, noised to level t−1    # masked replacement

Text plugs in the clamping trick as `x0_transform` and control as
`step_hook`; images plug in thresholding (`thresholding.py`) as `x0_transform`
and classifier-free guidance (`classifier_free.py`) as a wrapper of `model`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Callable, Optional, Protocol

import torch
from tqdm.auto import tqdm

from .diffusion import GaussianDiffusion, _gather

ModelFn = Callable[..., torch.Tensor]  # model_fn(x_t, t, **model_kwargs) -> prediction
X0Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepHook(Protocol):
    def __call__(self, x_prev: torch.Tensor, *, x_t: torch.Tensor, mean: torch.Tensor,
                 variance: torch.Tensor, t: torch.Tensor, index: int) -> torch.Tensor: ...


@dataclass
class Known:
    """Positions held fixed during sampling (infilling, length control).

    `values` is the clean x_0 there and `mask` is True where it is known
    (broadcastable to the sample's shape). With `noised`, x_{t−1} at known
    positions is a fresh draw of q(x_{t−1} | x_0) (RePaint-style); without,
    it is the clean value at every step. The final sample holds `values`
    exactly either way.

    `resample` > 1 is RePaint's resampling (Lugmayr et al., 2022, jump length 1): each step is taken
    `resample` times, going back up between tries by one forward step, x_t ~ N(√(1−β_t) x_{t−1}, β_t I),
    so that the redrawn part has more steps to agree with the held one.
    """

    values: torch.Tensor
    mask: torch.Tensor
    noised: bool = True
    resample: int = 1


@dataclass
class EarlyExit:
    """Stop a row once its x̂_0 (after the x0-transform) has not changed for `patience` steps.

    Meant for a quantizing transform such as text's clamping trick, where x̂_0 is exactly a word's
    embedding at every position, so "unchanged" means the words have settled; with no quantization
    x̂_0 never repeats exactly and nothing stops early. A stopped row's output is that x̂_0, and the
    row leaves the batch, so the steps left cost only the rows still running. `accept(x0, step_hook)`
    may veto a settled row (it gets the settled rows' x̂_0 and the step hook narrowed to them, and
    returns a bool per row): text uses it to require that the controls are met. A vetoed row whose x̂_0
    then stays the same for `veto_limit` steps stops all the same: nothing is changing it.
    """

    patience: int
    accept: Optional[Callable[[torch.Tensor, Any], torch.Tensor]] = None
    veto_limit: Optional[int] = None  # a vetoed row stops anyway once x̂_0 has stayed the same this many steps


def take_rows(obj, rows: torch.Tensor, batch: int):
    """`obj` narrowed to the batch rows `rows` (of `batch`): tensors with `batch` rows are indexed, objects
    with a `take_rows(rows, batch)` method are asked, lists, tuples, dicts and dataclasses go field by field,
    anything else (numbers, models, tensors shared by every row) is kept as it is."""
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() and obj.shape[0] == batch else obj
    if hasattr(obj, "take_rows"):
        return obj.take_rows(rows, batch)
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(v, rows, batch) for v in obj)
    if isinstance(obj, dict):
        return {k: take_rows(v, rows, batch) for k, v in obj.items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        return replace(obj, **{f.name: take_rows(getattr(obj, f.name), rows, batch) for f in fields(obj)})
    return obj


def _randn(shape, generator, device, dtype):
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


# ---- samplers: one step rule each ------------------------------------------------------
# A step rule turns the prediction x̂_0 at x_t into the mean and variance of p(x_{t−1} | x_t).
# Every rule takes the same arguments, (diffusion, x̂_0, x_t, t, eta, variance), and uses the
# ones it needs: eta is DDIM's, variance DDPM's. Add a sampler by adding a function here.
StepRule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def ddpm_step(diffusion: GaussianDiffusion, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
              eta: float = 0.0, variance: str = "small"):
    """Ancestral DDPM (Ho et al., 2020): the posterior q(x_{t−1} | x_t, x̂_0).

    Variance σ̃²_t ('small') or β_t ('large', with β_1 replaced by σ̃²_2 as in Ho et al.).
    """
    mean, var, _ = diffusion.q_posterior(x0, xt, t)
    if variance == "large":
        betas = diffusion.betas.clone()
        betas[0] = diffusion.posterior_variance[1] if diffusion.num_timesteps > 1 else betas[0]
        var = _gather(betas, t, xt)
    elif variance != "small":
        raise ValueError(f"unknown DDPM variance {variance!r}; choose small or large")
    return mean, var.expand_as(xt)


def ddim_step(diffusion: GaussianDiffusion, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
              eta: float = 0.0, variance: str = "small"):
    """DDIM (Song et al., 2021): μ = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂, with
    σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}); η = 0 is deterministic."""
    ab = _gather(diffusion.alpha_bar, t, xt)
    ab_prev = _gather(diffusion.alpha_bar_prev, t, xt)
    eps = diffusion.eps_from_x0(x0, xt, t)
    var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - var).clamp_min(0).sqrt() * eps
    return mean, var.expand_as(xt)


SAMPLERS: dict[str, StepRule] = {"ddpm": ddpm_step, "ddim": ddim_step}


def get_sampler(name: str) -> StepRule:
    """The step rule registered as `name`; ValueError listing the choices otherwise."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def step_moments(diffusion: GaussianDiffusion, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                 sampler: str = "ddpm", eta: float = 0.0, variance: str = "small"):
    """Mean and variance of p(x_{t−1} | x_t) given x̂_0, by the sampler named `sampler`."""
    return get_sampler(sampler)(diffusion, x0, xt, t, eta=eta, variance=variance)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    sampler: str = "ddpm",
    eta: float = 0.0,
    variance: str = "small",
    prediction: str = "x0",
    x0_transform: Optional[X0Transform] = None,
    step_hook: Optional[StepHook] = None,
    known: Optional[Known] = None,
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = True,
    model_kwargs: Optional[dict] = None,
    early_exit: Optional[EarlyExit] = None,
) -> torch.Tensor:
    """Draw samples of `shape` from x_T ~ N(0, I) down to x_0.

    `model_fn(x_t, t, **model_kwargs)` receives the training-step index
    (`diffusion.timestep_map`) and returns a prediction of kind `prediction`;
    conditioning (a caption's states, a class) travels in `model_kwargs`, as
    k-diffusion's `extra_args`. `sampler` names a step rule in `SAMPLERS`.
    `callback` receives a dict with index, t, x_t, x0 (after the transform) and
    x_prev at every step.
    """
    step_rule = get_sampler(sampler)
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if early_exit is not None and (isinstance(early_exit.patience, bool) or not isinstance(early_exit.patience, int)
                                   or early_exit.patience < 1):
        raise ValueError(f"EarlyExit.patience must be an integer >= 1, got {early_exit.patience!r}")
    if early_exit is not None and early_exit.veto_limit is not None and (
            isinstance(early_exit.veto_limit, bool) or not isinstance(early_exit.veto_limit, int)
            or early_exit.veto_limit < early_exit.patience):
        raise ValueError(f"EarlyExit.veto_limit must be null or an integer >= patience ({early_exit.patience}), "
                         f"got {early_exit.veto_limit!r}")
    x = noise.to(device, dtype) if noise is not None else _randn(shape, generator, device, dtype)
    known_values = known_mask = None
    if known is not None:
        known_values = known.values.to(device, dtype).expand(shape)
        known_mask = known.mask.to(device).expand(shape)

    def hold(x_level, index):  # the known positions of x at level `index` (clean below 0)
        if index < 0 or not known.noised:
            held = known_values
        else:
            t_k = torch.full((x_level.shape[0],), index, device=device, dtype=torch.long)
            held = diffusion.q_sample(known_values, t_k, _randn(x_level.shape, generator, device, dtype))
        return torch.where(known_mask, held, x_level)

    if known is not None:
        x = hold(x, diffusion.num_timesteps - 1)
    tries = 1 if known is None else known.resample
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"Known.resample must be an integer >= 1, got {tries!r}")

    def _step(x, t, model_t, index):  # one reverse step from x_t: (x_{t-1}, the x̂_0 it came from)
        x0 = diffusion.predict_x0(model_fn(x, model_t, **model_kwargs), x, t, prediction)
        if known is not None:
            x0 = torch.where(known_mask, known_values, x0)
        if x0_transform is not None:
            x0 = x0_transform(x0, model_t)
        mean, var = step_rule(diffusion, x0, x, t, eta=eta, variance=variance)
        x_prev = mean + var.sqrt() * _randn(x.shape, generator, device, dtype) if index > 0 else mean
        if step_hook is not None:
            with torch.enable_grad():
                x_prev = step_hook(x_prev, x_t=x, mean=mean, variance=var, t=model_t, index=index)
        if known is not None:
            x_prev = hold(x_prev, index - 1)
        return x_prev, x0

    # early exit: rows still running (`rows`), each one's last x̂_0 and how many steps it has stayed the same
    rows = torch.arange(shape[0], device=device)
    out = torch.empty(shape, device=device, dtype=dtype) if early_exit is not None else None
    last_x0, same = None, torch.zeros(shape[0], dtype=torch.long, device=device)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    bar = tqdm(indices, desc=f"{sampler} sampling", disable=not progress, leave=False)
    with bar:  # closed (and cleared) before any error propagates, so an error message is the last line
        for index in bar:
            t = torch.full((x.shape[0],), index, device=device, dtype=torch.long)
            model_t = diffusion.timestep_map.to(device)[t]
            for attempt in range(tries if index > 0 else 1):
                if attempt:  # RePaint: back up one step from the last try's x_{t-1}
                    beta = _gather(diffusion.betas, t, x)
                    x = (1 - beta).sqrt() * x_prev + beta.sqrt() * _randn(x.shape, generator, device, dtype)
                x_prev, x0 = _step(x, t, model_t, index)
            if callback is not None:
                callback({"index": index, "t": model_t, "x_t": x, "x0": x0, "x_prev": x_prev, "rows": rows})
            x = x_prev
            if early_exit is None or index == 0:
                continue
            if last_x0 is not None:
                same = torch.where((x0 == last_x0).flatten(1).all(1), same + 1, 0)
            last_x0 = x0
            settled = (same >= early_exit.patience).nonzero().squeeze(1)
            if len(settled) and early_exit.accept is not None:
                ok = early_exit.accept(x0[settled], take_rows(step_hook, settled, len(x))).to(device)
                if early_exit.veto_limit is not None:
                    ok = ok | (same[settled] >= early_exit.veto_limit)
                settled = settled[ok]
            if not len(settled):
                continue
            out[rows[settled]] = x0[settled]
            keep = torch.ones(len(x), dtype=torch.bool, device=device)
            keep[settled] = False
            keep = keep.nonzero().squeeze(1)
            if not len(keep):
                return out
            n = len(x)
            x, last_x0, same, rows = x[keep], last_x0[keep], same[keep], rows[keep]
            model_fn, x0_transform, step_hook, model_kwargs, known_values, known_mask = (
                take_rows(v, keep, n) for v in (model_fn, x0_transform, step_hook, model_kwargs, known_values,
                                                known_mask))
    if out is None:
        return x
    out[rows] = x
    return out
