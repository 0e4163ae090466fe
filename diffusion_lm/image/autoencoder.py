"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al., 2022),
and its VQ-regularised twin (VQ-VAE, van den Oord et al., 2017; VQGAN, Esser et al., 2021).

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

* The VQ model (`AutoencoderVQ`, `VQConfig`) has the same encoder and decoder with a codebook between:
  the encoder's h (B, 4, 8, 8) is snapped to the nearest of K code vectors, gradients pass straight
  through, and the loss adds the codebook term |sg[h] − e|² and β times the commitment |h − sg[e]|².
  Codes that fall out of use can be restarted on encoder outputs; a patch discriminator (hinge loss) can
  join after a warm-up (`PatchDiscriminator`, `adversarial_terms`).

A folder is config.json (the config's fields plus `scale_factor`) and model.safetensors;
`load_autoencoder` opens either kind.
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
    def __init__(self, c: AutoencoderConfig, out_channels: Optional[int] = None):
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
        self.conv_out = nn.Conv2d(ch, out_channels or 2 * c.latent_channels, 3, padding=1)

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


class _Autoencoder(nn.Module):
    """What both first stages share: the latent scale, the input check, and the folder format."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__()
        config.validate()
        self.config = config
        self.scale_factor = float(scale_factor)  # set by `calibrate`; saved in config.json, not a weight

    def latent(self, x: torch.Tensor) -> torch.Tensor:  # the unscaled latent `encode` scales
        raise NotImplementedError

    # ---- latent scale ---------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch_size: int = 256) -> float:
        """Set scale_factor = 1 / std of the unscaled latents of images x (every latent value pooled, as
        LDM's `scale_factor`), so that encode(x) has unit variance; returns it."""
        was = self.training
        self.eval()
        means = torch.cat([self.latent(x[k: k + batch_size]).float() for k in range(0, len(x), batch_size)])
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

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise UserError(f"the autoencoder decodes latents of shape (B, {self.config.latent_channels}, h, w), "
                            f"got {tuple(z.shape)}")

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
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"):
        raw, state = io.load_pretrained(directory, "autoencoder")
        where = str(Path(directory) / "config.json")
        raw = dict(raw)
        if "scale_factor" not in raw:
            raise UserError(f"{where}: no scale_factor (not a folder written by train-autoencoder)")
        scale = raw.pop("scale_factor")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise UserError(f"{where}: scale_factor must be a positive number, got {scale!r}")
        config = io.config_from_dict(cls.config_class, raw, where)
        model = cls(config, scale)
        io.load_weights(model, state, str(directory))
        return model.to(device).eval()


class AutoencoderKL(_Autoencoder):
    def __init__(self, config: AutoencoderConfig, scale_factor: float = 1.0):
        super().__init__(config, scale_factor)
        self.encoder, self.decoder = Encoder(config), Decoder(config)

    # ---- the two directions ---------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled (mean, log-variance) of q(z | x), each (B, latent_channels, H/f, W/f)."""
        self._check_image(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

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
        self._check_latent(z)
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
        recon, mean, logvar = self(x, noise)
        rec = reconstruction_loss(recon, x, rec_loss)
        kl = kl_divergence(mean, logvar).mean()
        loss = rec + kl_weight * kl / x[0].numel()
        return loss, {"loss": loss, "rec": rec, "kl": kl}


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind not in REC_LOSSES:
        raise UserError(f"unknown rec_loss {kind!r}; choose l1 or mse")
    return (recon - x).abs().mean() if kind == "l1" else (recon - x).pow(2).mean()


# ---- the VQ first stage (VQ-VAE / VQGAN) ----------------------------------------------------------
@dataclass
class VQConfig(AutoencoderConfig):
    codebook_size: int = 512  # K code vectors of latent_channels values each
    beta: float = 0.25  # weight of the commitment loss |h − sg[e]|² (VQ-VAE's β)

    def validate(self) -> None:
        super().validate()
        if isinstance(self.codebook_size, bool) or not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise UserError(f"autoencoder.codebook_size must be an integer >= 2, got {self.codebook_size!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta >= 0:
            raise UserError(f"autoencoder.beta must be a number >= 0, got {self.beta!r}")


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantization of (B, C, h, w) maps to a codebook of K vectors in R^C, with the
    straight-through estimator: the forward value is the code e, the gradient to h is the identity.

    `usage` is an exponential moving average of each code's share of the assignments (a buffer, so it is
    checkpointed): `restart_dead` moves the codes that fell out of use onto encoder outputs."""

    def __init__(self, size: int, dim: int, usage_decay: float = 0.99):
        super().__init__()
        self.codebook = nn.Embedding(size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / size, 1.0 / size)  # VQ-VAE's initialisation
        self.usage_decay = usage_decay
        self.register_buffer("usage", torch.full((size,), 1.0 / size))

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code at every position: (B, h, w) long."""
        flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        w = self.codebook.weight
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]
        return dist.argmin(1).view(h.shape[0], h.shape[2], h.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The code vectors of indices (B, h, w) as a (B, C, h, w) map."""
        return self.codebook(codes).permute(0, 3, 1, 2)

    def forward(self, h: torch.Tensor):
        """(z_q, codes, codebook loss |sg[h] − e|², commitment loss |h − sg[e]|²); z_q = h + sg[e − h]."""
        codes = self.codes(h)
        e = self.lookup(codes)
        if self.training:
            with torch.no_grad():
                share = torch.bincount(codes.flatten(), minlength=len(self.usage)).float() / codes.numel()
                self.usage.mul_(self.usage_decay).add_((1 - self.usage_decay) * share)
        return h + (e - h).detach(), codes, F.mse_loss(e, h.detach()), F.mse_loss(h, e.detach())

    @torch.no_grad()
    def restart_dead(self, h: torch.Tensor, generator: torch.Generator, threshold: float = 0.03) -> int:
        """Codes whose usage fell under `threshold` / K are set to encoder outputs drawn from h (B, C, h, w)
        (`generator` picks which); returns how many moved."""
        dead = (self.usage < threshold / len(self.usage)).nonzero().flatten()
        if len(dead) == 0:
            return 0
        flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
        pick = torch.randint(0, len(flat), (len(dead),), generator=generator).to(flat.device)
        self.codebook.weight[dead] = flat[pick]
        self.usage[dead] = 1.0 / len(self.usage)
        return int(len(dead))


def code_perplexity(codes: torch.Tensor, size: int) -> float:
    """exp(entropy) of the code assignments' distribution: K when every code is used equally, 1 for one code."""
    p = torch.bincount(codes.flatten(), minlength=size).float()
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


class AutoencoderVQ(_Autoencoder):
    """The VQ first stage. As in LDM's VQ-regularised models the diffusion runs on the encoder's
    continuous output h (scaled to unit variance), and the quantization belongs to the decoder: `decode`
    snaps every latent vector to its nearest code before decoding, as Diffusion-LM's rounding snaps a
    sampled embedding to a word."""

    config_class = VQConfig

    def __init__(self, config: VQConfig, scale_factor: float = 1.0):
        super().__init__(config, scale_factor)
        self.encoder = Encoder(config, out_channels=config.latent_channels)
        self.quantizer = VectorQuantizer(config.codebook_size, config.latent_channels)
        self.decoder = Decoder(config)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled, unquantized encoder output h (B, latent_channels, H/f, W/f)."""
        self._check_image(x)
        return self.encoder(x)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: Optional[torch.Generator] = None
               ) -> torch.Tensor:
        """h · scale_factor (deterministic: `sample` is accepted for the KL model's signature)."""
        return self.latent(x) * self.scale_factor

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The code index of every latent position of images x: (B, H/f, W/f)."""
        return self.quantizer.codes(self.latent(x))

    def decode(self, z: torch.Tensor, clamp: bool = False) -> torch.Tensor:
        """Images of scaled latents z: each latent vector snapped to its nearest code, then decoded."""
        self._check_latent(z)
        h = z / self.scale_factor
        x = self.decoder(self.quantizer.lookup(self.quantizer.codes(h)))
        return x.clamp(-1, 1) if clamp else x

    def forward(self, x: torch.Tensor):
        """(reconstruction, codes, codebook loss, commitment loss)."""
        z_q, codes, codebook, commit = self.quantizer(self.latent(x))
        return self.decoder(z_q), codes, codebook, commit

    def loss(self, x: torch.Tensor, rec_loss: str = "mse", disc: Optional["PatchDiscriminator"] = None,
             disc_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """(loss, terms): reconstruction + |sg[h] − e|² + β |h − sg[e]|², plus with a discriminator
        disc_weight times the generator's hinge term and the discriminator's own hinge loss (each side gets
        only its own gradient: `adversarial_terms`); terms include the batch's code perplexity."""
        recon, codes, codebook, commit = self(x)
        rec = reconstruction_loss(recon, x, rec_loss)
        loss = rec + codebook + self.config.beta * commit
        terms = {"rec": rec, "codebook": codebook.detach(), "commit": commit.detach(),
                 "perplexity": torch.tensor(code_perplexity(codes, self.config.codebook_size))}
        if disc is not None:
            gen, d = adversarial_terms(disc, x, recon)
            loss = loss + disc_weight * gen + d
            terms.update(gen=gen.detach(), disc=d.detach())
        return loss, {"loss": loss, **terms}


AUTOENCODERS = {"kl": AutoencoderKL, "vq": AutoencoderVQ}


def load_autoencoder(directory: str | os.PathLike, device: str | torch.device = "cpu") -> _Autoencoder:
    """The first stage in a folder from train-autoencoder, KL or VQ (a VQ folder's config has a codebook)."""
    raw = io.load_json(Path(directory) / "config.json") if (Path(directory) / "config.json").is_file() else {}
    kind = "vq" if isinstance(raw, dict) and "codebook_size" in raw else "kl"
    return AUTOENCODERS[kind].from_pretrained(directory, device)


class PatchDiscriminator(nn.Module):
    """VQGAN's optional adversary, small: stride-2 convs to a map of real/fake logits, one per patch."""

    def __init__(self, in_channels: int = 3, width: int = 32, layers: int = 2):
        super().__init__()
        mods, ch = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)], width
        for _ in range(layers - 1):
            mods += [nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.GroupNorm(8, 2 * ch), nn.LeakyReLU(0.2)]
            ch *= 2
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def adversarial_terms(disc: PatchDiscriminator, x: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(generator term, discriminator term) of the hinge GAN loss, arranged so that one backward pass gives each
    side only its own gradient: the generator's −D(x̂) reads the discriminator with its weights detached, and the
    discriminator's hinge reads x̂ detached."""
    frozen = {k: v.detach() for k, v in disc.named_parameters()}
    gen = -torch.func.functional_call(disc, frozen, (recon,)).mean()
    d = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
    return gen, d


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
