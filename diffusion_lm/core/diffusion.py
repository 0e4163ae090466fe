"""Gaussian diffusion over tensors of any shape (B, ...).

Index convention: arrays are indexed by i = 0..T−1, where index i is the
paper's step t = i + 1. So `alpha_bar[0]` is ᾱ_1, the least noisy latent, and
the model is always called with the index of the *training* timestep, also
after respacing (see `timestep_map`).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .schedules import SCHEDULES, get_betas

# A diffusion saves beside its model, as diffusers keeps scheduler_config.json apart from the UNet's
# config.json: the model is a function of (x_t, t), the process that noises and samples is not its own.
DIFFUSION_FILE = "diffusion.json"


def _gather(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] as float32, broadcastable against `like` (B, ...)."""
    out = arr.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


MAX_STEPS = 1_000_000  # T; the paper's is 2000


@dataclass
class DiffusionConfig:
    """The process a model was trained with: the noise schedule's name and T.

    No defaults here: they belong to the modality (text sets sqrt / 2000).
    """

    schedule: str
    steps: int

    def validate(self) -> None:
        """ValueError naming the field when a value is out of range."""
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown noise schedule {self.schedule!r}; choose one of {sorted(SCHEDULES)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: the number of diffusion steps must be a positive integer, got {self.steps!r}")
        if self.steps > MAX_STEPS:  # its float64 tables alone would not fit in memory
            raise ValueError(f"steps: at most {MAX_STEPS:,} diffusion steps, got {self.steps:,}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object for DiffusionConfig, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            unknown, missing = sorted(set(d) - names), sorted(names - set(d))
            raise ValueError(f"DiffusionConfig keys do not match (unknown {unknown}, missing {missing})")
        cfg = cls(**d)
        cfg.validate()
        return cfg


def save_diffusion_config(directory: str | os.PathLike, config: DiffusionConfig) -> Path:
    """Write `config` as directory/diffusion.json (complete or not at all)."""
    config.validate()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / DIFFUSION_FILE
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{DIFFUSION_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(config), indent=2) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_diffusion_config(directory: str | os.PathLike) -> DiffusionConfig:
    """directory/diffusion.json; FileNotFoundError when absent, ValueError when malformed."""
    path = Path(directory) / DIFFUSION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        return DiffusionConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ValueError(f"{path} is not usable JSON (nested too deeply)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class GaussianDiffusion:
    """The forward process q, its posterior, and conversions between predictions.

    Holds float64 schedule arrays; results come back in the input's dtype.
    """

    def __init__(self, betas: torch.Tensor, timestep_map: torch.Tensor | None = None,
                 config: DiffusionConfig | None = None):
        betas = betas.to(torch.float64)
        self.config = config  # what `from_config` was given (None for raw betas and respaced processes)
        if betas.dim() != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # Index i of this process is training step timestep_map[i] of the model.
        self.timestep_map = (
            torch.arange(self.num_timesteps) if timestep_map is None else timestep_map.long()
        )
        alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(alphas, 0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        self.sqrt_alpha_bar = self.alpha_bar.sqrt()
        self.sqrt_one_minus_alpha_bar = (1.0 - self.alpha_bar).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(c0 · x_0 + ct · x_t, σ̃²_t)
        self.posterior_variance = betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        self.posterior_coef_x0 = betas * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.posterior_coef_xt = (1.0 - self.alpha_bar_prev) * alphas.sqrt() / (1.0 - self.alpha_bar)
        # σ̃²_1 is 0; the log is clipped with the next value, as in Ho et al.
        var = self.posterior_variance.clone()
        if self.num_timesteps > 1:
            var[0] = self.posterior_variance[1]
        self.posterior_log_variance_clipped = var.clamp_min(1e-20).log()

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> "GaussianDiffusion":
        cfg.validate()
        return cls(get_betas(cfg.schedule, cfg.steps), config=cfg)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "GaussianDiffusion":
        """The process saved in directory/diffusion.json."""
        return cls.from_config(load_diffusion_config(directory))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        if self.config is None:
            raise ValueError("only a process built by from_config can be saved (a respaced one is rebuilt at sampling)")
        return save_diffusion_config(directory, self.config)

    # ---- respacing -------------------------------------------------------
    def respace(self, num_steps: int) -> "GaussianDiffusion":
        """A process over `num_steps` evenly spaced training steps with the same ᾱ there.

        β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k−1}} keeps q(x_t | x_0) identical at the kept
        steps, so a model trained with T steps samples with fewer.
        """
        T = self.num_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"sampling steps must be in [1, {T}], got {num_steps}")
        if num_steps == T:
            return self
        # Always keep the noisiest step (sampling starts there) and, for n ≥ 2, the cleanest.
        kept = torch.linspace(T - 1, 0, num_steps).round().long().unique()
        ab = self.alpha_bar[kept]
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        return GaussianDiffusion(1.0 - ab / ab_prev, timestep_map=self.timestep_map[kept])

    # ---- forward process -------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and variance of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)."""
        mean = _gather(self.sqrt_alpha_bar, t, x0) * x0
        var = _gather(1.0 - self.alpha_bar, t, x0).expand_as(x0)
        return mean, var

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None):
        """Draw x_t ~ q(x_t | x_0)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return _gather(self.sqrt_alpha_bar, t, x0) * x0 + _gather(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = _gather(self.posterior_coef_x0, t, xt) * x0 + _gather(self.posterior_coef_xt, t, xt) * xt
        var = _gather(self.posterior_variance, t, xt)
        log_var = _gather(self.posterior_log_variance_clipped, t, xt)
        return mean, var, log_var

    # ---- prediction conversions -------------------------------------------
    def eps_from_x0(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return (xt - _gather(self.sqrt_alpha_bar, t, xt) * x0) / _gather(self.sqrt_one_minus_alpha_bar, t, xt)

    def x0_from_eps(self, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return (xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt) * eps) / _gather(self.sqrt_alpha_bar, t, xt)

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor):
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho, 2022)."""
        return _gather(self.sqrt_alpha_bar, t, x0) * eps - _gather(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def x0_from_v(self, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return _gather(self.sqrt_alpha_bar, t, xt) * xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt) * v

    def predict_x0(self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prediction: str):
        """Turn a model output of kind `prediction` ('x0', 'eps' or 'v') into x̂_0."""
        if prediction == "x0":
            return output
        if prediction == "eps":
            return self.x0_from_eps(output, xt, t)
        if prediction == "v":
            return self.x0_from_v(output, xt, t)
        raise ValueError(f"unknown prediction type {prediction!r}; choose x0, eps or v")
