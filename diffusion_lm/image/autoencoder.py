"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al., 2022).

    x (B, 3, 32, 32) in [−1, 1] ─ encoder ─ (μ, log σ²) (B, 4, 8, 8) ─ z = μ (+ σ ε) ─ decoder ─ x̂

* The encoder is conv_in, then per level `blocks` ResBlocks (GroupNorm → SiLU → 3×3 conv, twice, plus a
  residual) and a stride-2 conv between levels (two of them: f = 4, 32 × 32 → 8 × 8), a middle of two
  ResBlocks, and GroupNorm → SiLU → conv to 2 × latent_channels: the posterior's mean and log-variance.
  The decoder mirrors it with nearest-neighbour ×2 upsampling and a conv.
* Training loss (`loss`): reconstruction of x from a sampled z, mean (x − x̂)² (mse) or |x − x̂| (l1)
  per pixel value, plus kl_weight · KL(N(μ, σ²) ‖ N(0, I)) summed over the latent and divided by the
  3·H·W pixel values, so that kl_weight reads as LDM's (whose losses are sums over the image).
* `scale_factor` is set after training (`calibrate`) to 1 / std of the latent means over training
  images, so that `encode` returns latents of unit variance, the scale the diffusion's noise assumes;
  `decode` divides it out again.

A folder is config.json (AutoencoderConfig's fields plus `scale_factor`) and model.safetensors.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Downsample, Upsample

from .. import io
from ..errors import UserError

REC_LOSSES = ("l1", "mse")
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp of the log-variance


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 32  # width of the first level
    channel_mult: List[int] = field(default_factory=lambda: [1, 2, 2])  # one entry per level; f = 2^(levels − 1)
    blocks: int = 1  # ResBlocks per level (the decoder has one more)
    groups: int = 8  # GroupNorm groups (must divide every level's width)

    def validate(self) -> None:
        """One-line UserErrors naming the key (`autoencoder.<field>`)."""
        for name in ("in_channels", "latent_channels", "channels", "blocks", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"autoencoder.{name} must be a positive integer, got {v!r}")
        mult = list(self.channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise UserError(f"autoencoder.channel_mult must be a list of positive integers, got {mult}")
        for m in mult:
            if (self.channels * m) % self.groups:
                raise UserError(f"autoencoder.groups={self.groups} does not divide a level's width "
                                f"{self.channels * m} (channels x channel_mult)")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        widths = [c.channels * m for m in c.channel_mult]
        self.conv_in = nn.Conv2d(c.in_channels, widths[0], 3, padding=1)
        layers, ch = [], widths[0]
        for level, w in enumerate(widths):
            for _ in range(c.blocks):
                layers.append(ResBlock(ch, w, c.groups))
                ch = w
            if level < len(widths) - 1:
                layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResBlock(ch, ch, c.groups), ResBlock(ch, ch, c.groups))
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x):
        h = self.middle(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        widths = [c.channels * m for m in c.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.middle = nn.Sequential(ResBlock(ch, ch, c.groups), ResBlock(ch, ch, c.groups))
        layers = []
        for level in reversed(range(len(widths))):
            for _ in range(c.blocks + 1):
                layers.append(ResBlock(ch, widths[level], c.groups))
                ch = widths[level]
            if level > 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(c.groups, ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def forward(self, z):
        h = self.up(self.middle(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) of each sample, summed over its latent: ½ Σ (μ² + σ² − 1 − log σ²); (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__()
        config.validate()
        self.config = config
        self.scale_factor = float(scale_factor)  # set by `calibrate`; saved in config.json, not a weight
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    # ---- the two directions ---------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (mean, log-variance) of q(z | x), each (B, latent_channels, H/f, W/f)."""
        self._check_image(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """Latents of images x in [−1, 1] (B, 3, H, W), times scale_factor: the posterior mean, or a draw
        μ + σ ε with sample=True; (B, latent_channels, H/f, W/f)."""
        mean, logvar = self.posterior(x)
        z = mean
        if sample:
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator, device=mean.device,
                                                           dtype=mean.dtype)
        return z * self.scale_factor

    def decode(self, z: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """Images in [−1, 1] (B, 3, H, W) of scaled latents z, unclipped unless clamp=True (the decoder is
        trained toward [−1, 1]; values a little outside are clipped when made uint8)."""
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise UserError(f"the autoencoder decodes latents of shape (B, {self.config.latent_channels}, h, w), "
                            f"got {tuple(z.shape)}")
        x = self.decoder(z / self.scale_factor)
        return x.clamp(-1, 1) if clamp else x

    def forward(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None):
        """(reconstruction, mean, logvar): x̂ from z = μ + σ·noise (μ alone when noise is None)."""
        mean, logvar = self.posterior(x)
        z = mean if noise is None else mean + (0.5 * logvar).exp() * noise
        return self.decoder(z), mean, logvar

    def loss(self, x: torch.Tensor, noise: Optional[torch.Tensor] = None, kl_weight: float = 1e-6,
             rec_loss: str = "mse") -> tuple[torch.Tensor, dict]:
        """(loss, {loss, rec, kl}): reconstruction per pixel value + kl_weight · KL / (C·H·W), batch means."""
        if rec_loss not in REC_LOSSES:
            raise UserError(f"unknown rec_loss {rec_loss!r}; choose l1 or mse")
        recon, mean, logvar = self(x, noise)
        rec = (recon - x).abs().mean() if rec_loss == "l1" else (recon - x).pow(2).mean()
        kl = kl_divergence(mean, logvar).mean()
        loss = rec + kl_weight * kl / x[0].numel()
        return loss, {"loss": loss, "rec": rec, "kl": kl}

    # ---- latent scale ---------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch_size: int = 256) -> float:
        """Set scale_factor = 1 / std of the posterior means of images x (every latent value pooled, as
        LDM's `scale_factor`), so that encode(x) has unit variance; returns it."""
        was = self.training
        self.eval()
        means = torch.cat([self.posterior(x[k: k + batch_size])[0].float() for k in range(0, len(x), batch_size)])
        self.train(was)
        std = float(means.std())
        if not math.isfinite(std) or std <= 0:
            raise UserError(f"cannot calibrate the latent scale: the latents' std is {std}")
        self.scale_factor = 1.0 / std
        return self.scale_factor

    def _check_image(self, x: torch.Tensor) -> None:
        c, f = self.config, self.config.factor
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise UserError(f"the autoencoder encodes images of shape (B, {c.in_channels}, H, W) with H and W "
                            f"divisible by {f}, got {tuple(x.shape)}")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- folders --------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {**asdict(self.config), "scale_factor": self.scale_factor}

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                        manifest: dict | None = None) -> Path:
        """config.json (config + scale_factor) and model.safetensors (`state_dict` overrides the weights,
        e.g. an EMA copy), and manifest.json when given."""
        return io.save_pretrained(directory, self.config_dict(), state_dict or self.state_dict(), manifest=manifest)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "AutoencoderKL":
        raw, state = io.load_pretrained(directory, "autoencoder")
        where = str(Path(directory) / "config.json")
        raw = dict(raw)
        if "scale_factor" not in raw:
            raise UserError(f"{where}: no scale_factor (not a folder written by train-autoencoder)")
        scale = raw.pop("scale_factor")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise UserError(f"{where}: scale_factor must be a positive number, got {scale!r}")
        config = io.config_from_dict(AutoencoderConfig, raw, where)
        model = cls(config, scale)
        io.load_weights(model, state, str(directory))
        return model.to(device).eval()


def psnr(x: torch.Tensor, y: torch.Tensor) -> dict:
    """PSNR (dB) between images in [−1, 1] (B, 3, H, W), both rounded to uint8 first (what is seen and
    saved): `psnr` from the mean squared error over every pixel of the set (the stricter figure), and
    `psnr_mean` the mean of per-image PSNRs (an exact image counts as 100 dB)."""
    def u8(t):
        return ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round()

    err = (u8(x) - u8(y)).pow(2).flatten(1).mean(1)
    per = torch.where(err > 0, 10 * torch.log10(255.0 ** 2 / err.clamp_min(1e-12)), torch.full_like(err, 100.0))
    total = float(err.mean())
    return {"psnr": round(10 * math.log10(255.0 ** 2 / total), 3) if total > 0 else 100.0,
            "psnr_mean": round(float(per.mean()), 3)}
