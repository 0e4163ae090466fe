"""The denoiser of the image side: a UNet ε_θ(x_t, t, c) (or v_θ) with cross-attention over a caption.

After Ho et al. (2020) and the latent-diffusion UNet (Rombach et al., 2022, `openaimodel.py`):

    x_t ─ conv_in ─ [ResBlock (+ SpatialTransformer)] × blocks, Downsample ─ ... ─ middle ─ ... ─ conv_out
                    └──────────── skip connections, concatenated on the way up ────────────┘

* A ResBlock is GroupNorm → SiLU → conv, then the timestep embedding enters as a scale and shift of
  the second norm (h ← norm(h) · (1 + s) + b, "scale-shift norm"), then SiLU → dropout → conv, plus
  a residual.
* The timestep embedding is sinusoidal features of t through a two-layer MLP.
* A SpatialTransformer at the low resolutions (`attention_resolutions`, and always in the middle)
  flattens the H×W grid into tokens and runs self-attention, then cross-attention whose keys and
  values are the caption's token states c (B, L, H) from the frozen CLIP text tower, with padding
  masked out (`context_mask`, True at real tokens), then an MLP. This is the one way conditioning
  enters the network; classifier-free guidance needs nothing more, since the empty caption's states
  are the unconditional c = ∅.
* The last conv of every residual branch starts at zero, so an untrained UNet is close to the
  identity on its skips and each block is learned as a correction (as in LDM's `zero_module`).

`space` says what x is: `latent` (the KL autoencoder's z, 4 × 8 × 8) or `pixel` (3 × 32 × 32 in
[−1, 1]). `prediction` is what the output means: `eps` (ε̂) or `v` (v̂ = √ᾱ ε − √(1−ᾱ) x_0); the core
sampler turns either into x̂_0. A folder is config.json + model.safetensors (`diffusion_lm.io`) and
diffusion.json beside them (`core.save_diffusion_config`): the UNet does not own its diffusion.
"""
from __future__ import annotations

import hashlib
import json
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
from ..core import DiffusionConfig, GaussianDiffusion, load_diffusion_config, save_diffusion_config
from ..errors import UserError

SPACES = ("latent", "pixel")
PREDICTIONS = ("eps", "v")


@dataclass
class UNetConfig:
    space: str = "latent"  # latent | pixel
    # null: taken from the data by the trainer (the autoencoder's latents, or 3 x 32 x 32 pixels); a value is checked
    in_channels: Optional[int] = None  # 4 for the autoencoder's latents, 3 for pixels
    image_size: Optional[int] = None  # side of the square input: 8 for latents, 32 for pixels
    channels: int = 64  # width of the first level
    channel_mult: List[int] = field(default_factory=lambda: [1, 2])  # width of each level, × channels
    blocks: int = 2  # ResBlocks per level
    attention_resolutions: List[int] = field(default_factory=lambda: [8, 4])  # sides that get a transformer
    heads: int = 4
    context_dim: Optional[int] = None  # width of the caption states (the CLIP text tower's; null: the trainer's)
    dropout: float = 0.0
    groups: int = 16  # GroupNorm groups (must divide every level's width)
    prediction: str = "v"  # v | eps (eps is ill-conditioned where alpha_bar_T ~ 0: see eps_conditioning)
    # trainable transformer layers over the frozen caption states before any cross-attention reads them (0: none);
    # they start as the identity, so a UNet trained without them can be continued with them (train.init_from)
    text_layers: int = 0
    # set by the trainer: fingerprints of the frozen parts it was trained with, checked wherever it is used
    autoencoder_fingerprint: Optional[str] = None
    clip_fingerprint: Optional[str] = None

    def validate(self) -> None:
        """One-line UserErrors naming the key (`unet.<field>`)."""
        if self.space not in SPACES:
            raise UserError(f"unet.space must be latent or pixel, got {self.space!r}")
        for name in ("in_channels", "image_size", "context_dim"):
            if getattr(self, name) is None:
                raise UserError(f"unet.{name} is not set (the trainer sets it from the data and the CLIP model)")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"unet.prediction must be eps or v, got {self.prediction!r}")
        for name in ("in_channels", "image_size", "channels", "blocks", "heads", "context_dim", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"unet.{name} must be a positive integer, got {v!r}")
        if not self.channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                        for m in self.channel_mult):
            raise UserError(f"unet.channel_mult must be a list of positive integers, got {list(self.channel_mult)}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise UserError(f"unet.image_size {self.image_size} cannot be halved {len(self.channel_mult) - 1} "
                            f"times (one per extra level of unet.channel_mult)")
        for m in self.channel_mult:
            width = self.channels * m
            if width % self.groups or width % self.heads:
                raise UserError(f"unet: level width {width} (channels x channel_mult) must be divisible by "
                                f"unet.groups ({self.groups}) and unet.heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise UserError(f"unet.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.text_layers, bool) or not isinstance(self.text_layers, int) or self.text_layers < 0:
            raise UserError(f"unet.text_layers must be a non-negative integer, got {self.text_layers!r}")
        if self.text_layers and self.context_dim % self.heads:
            raise UserError(f"unet.text_layers: the caption width {self.context_dim} must be divisible by "
                            f"unet.heads ({self.heads})")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the integer timestep (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)
        self.norm2, self.drop = nn.GroupNorm(groups, cout), nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, C) over keys / values from `source` (B, L, D)."""

    def __init__(self, dim: int, source_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(source_dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = self.kv(source).view(B, source.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v)
        else:  # key padding mask; a row with no real key (never the case for a tokenised caption) reads nothing
            mask = mask.bool()
            some = mask.any(dim=1)
            keep = (mask | ~some[:, None])[:, None, None, :]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep) * some[:, None, None, None]
        return self.out(a.transpose(1, 2).reshape(B, N, C))


class SpatialTransformer(nn.Module):
    """LDM's block: the H×W grid as tokens; self-attention, cross-attention to the caption, MLP."""

    def __init__(self, ch: int, heads: int, context_dim: int, groups: int):
        super().__init__()
        self.norm, self.proj_in = nn.GroupNorm(groups, ch), nn.Linear(ch, ch)
        self.norm1, self.self_attn = nn.LayerNorm(ch), Attention(ch, ch, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(ch), Attention(ch, context_dim, heads)
        self.norm3 = nn.LayerNorm(ch)
        self.mlp = nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, ch))
        self.proj_out = zero(nn.Linear(ch, ch))

    def forward(self, x, context=None, context_mask=None):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        n = self.norm1(h)
        h = h + self.self_attn(n, n)
        if context is not None:  # without a caption the block is self-attention only
            h = h + self.cross_attn(self.norm2(h), context, context_mask)
        h = h + self.mlp(self.norm3(h))
        return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)


class CaptionLayer(nn.Module):
    """A pre-norm transformer layer over the caption's token states (self-attention over the real tokens,
    then an MLP). Both residual branches end in a zero-initialised projection, so a new layer is the identity."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), zero(nn.Linear(4 * dim, dim)))
        zero(self.attn.out)

    def forward(self, x, mask=None):
        n = self.norm1(x)
        x = x + self.attn(n, n, mask)
        return x + self.mlp(self.norm2(x))


class Stage(nn.ModuleList):
    """Layers run in order, each given what it needs (openaimodel's TimestepEmbedSequential)."""

    def forward(self, h, temb, context, context_mask):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, temb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, context_mask)
            else:
                h = layer(h)
        return h


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        temb = 4 * c.channels
        self.time_mlp = nn.Sequential(nn.Linear(c.channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)

        def res(cin, cout):
            return ResBlock(cin, cout, temb, c.dropout, c.groups)

        def attend(ch):
            return SpatialTransformer(ch, c.heads, c.context_dim, c.groups)

        # down: every stage's output is kept as a skip for the way up
        self.down = nn.ModuleList()
        skips, ch, side = [c.channels], c.channels, c.image_size
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.blocks):
                layers = [res(ch, c.channels * mult)]
                ch = c.channels * mult
                if side in c.attention_resolutions:
                    layers.append(attend(ch))
                self.down.append(Stage(layers))
                skips.append(ch)
            if level < len(c.channel_mult) - 1:
                self.down.append(Stage([Downsample(ch)]))
                skips.append(ch)
                side //= 2
        self.middle = Stage([res(ch, ch), attend(ch), res(ch, ch)])
        # up: one more block per level than down, each reading one skip
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for k in range(c.blocks + 1):
                layers = [res(ch + skips.pop(), c.channels * mult)]
                ch = c.channels * mult
                if side in c.attention_resolutions:
                    layers.append(attend(ch))
                if level > 0 and k == c.blocks:
                    layers.append(Upsample(ch))
                    side *= 2
                self.up.append(Stage(layers))
        self.out = nn.Sequential(nn.GroupNorm(c.groups, ch), nn.SiLU(), zero(nn.Conv2d(ch, c.in_channels, 3, padding=1)))
        # the caption's own layers (unet.text_layers), trained with the UNet on the frozen text tower's states
        self.text = nn.ModuleList(CaptionLayer(c.context_dim, c.heads) for _ in range(c.text_layers))

    def read_caption(self, context: Optional[torch.Tensor], context_mask: Optional[torch.Tensor] = None):
        """The caption states every cross-attention reads: the text tower's, through `unet.text_layers` layers."""
        if context is None:
            return None
        for layer in self.text:
            context = layer(context, context_mask)
        return context

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None, residuals: Optional[list[torch.Tensor]] = None
                ) -> torch.Tensor:
        """ε̂ or v̂ (as `config.prediction`) for x_t (B, C, S, S) at training steps t (B,), given the
        caption's token states `context` (B, L, context_dim) and `context_mask` (B, L), True at real tokens.
        `residuals` (a ControlNet's, one per skip and, last, one for the middle) are added to the skips
        and the middle block's output."""
        context = self.read_caption(context, context_mask)
        h, hs, temb = self._encode(x_t, t, context, context_mask)
        if residuals is not None:
            if len(residuals) != len(hs) + 1:
                raise ValueError(f"expected {len(hs) + 1} residuals (one per skip and the middle), got {len(residuals)}")
            hs = [a + b for a, b in zip(hs, residuals)]
            h = h + residuals[-1]
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), temb, context, context_mask)
        return self.out(h)

    def encode(self, x_t: torch.Tensor, t: torch.Tensor, context=None, context_mask=None, added=None):
        """The down path and the middle: (middle output, the skips, the timestep embedding). `added` (B, C, S, S)
        joins conv_in's output (a ControlNet's hint)."""
        return self._encode(x_t, t, self.read_caption(context, context_mask), context_mask, added)

    def _encode(self, x_t, t, context, context_mask, added=None):
        temb = self.time_mlp(timestep_embedding(t, self.config.channels))
        h = self.conv_in(x_t)
        if added is not None:
            h = h + added
        hs = [h]
        for stage in self.down:
            h = stage(h, temb, context, context_mask)
            hs.append(h)
        return self.middle(h, temb, context, context_mask), hs, temb

    def skip_widths(self) -> list[int]:
        """Channels of each skip the down path keeps (conv_in's first), then the middle's."""
        widths, ch = [self.config.channels], self.config.channels
        for stage in self.down:
            for layer in stage:
                if isinstance(layer, ResBlock):
                    ch = layer.conv2.out_channels
            widths.append(ch)
        return widths + [ch]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- folders ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, diffusion: GaussianDiffusion | DiffusionConfig,
                        state_dict: dict[str, torch.Tensor] | None = None, dtype=None) -> Path:
        """config.json + model.safetensors (`state_dict` overrides the weights, e.g. the EMA copy; `dtype`
        as `io.save_pretrained`: a float dtype or "int8") and the diffusion beside them as diffusion.json."""
        cfg = diffusion.config if isinstance(diffusion, GaussianDiffusion) else diffusion
        if not isinstance(cfg, DiffusionConfig):
            raise TypeError("save_pretrained needs a diffusion built by GaussianDiffusion.from_config, or its config")
        save_diffusion_config(directory, cfg)
        return io.save_pretrained(directory, asdict(self.config), state_dict or self.state_dict(), dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "UNet":
        return io.load_model(cls, UNetConfig, directory, "UNet", device)


MAX_EPS_GAIN = 1000.0  # largest 1/sqrt(alpha_bar_T) an eps-model on latents is trained for


def eps_gain(diffusion: GaussianDiffusion) -> float:
    """1/sqrt(alpha_bar_T): what x0 = (x_T - sqrt(1 - alpha_bar_T) eps) / sqrt(alpha_bar_T) multiplies an eps-model's
    error by at the first sampling step (2.0e4 for the cosine schedule at T = 1000, 158 for the linear)."""
    return float(1.0 / diffusion.alpha_bar[-1].sqrt())


def load_diffusion(directory: str | os.PathLike) -> GaussianDiffusion:
    """The process saved beside a UNet (diffusion.json), or a one-line UserError."""
    try:
        return GaussianDiffusion.from_config(load_diffusion_config(directory))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


# ---- the parts a UNet works with: pixels, the autoencoder's latents, the CLIP text tower's states ------
PIXELS = (3, 32)  # channels and side of a rendered scene


def images_to_tensor(images) -> torch.Tensor:
    """uint8 images (N, H, W, 3) (array or tensor) -> float (N, 3, H, W) in [−1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor):
    """float (N, 3, H, W) in [−1, 1] (values outside are clipped) -> uint8 numpy (N, H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _device_of(module) -> torch.device:
    p = next(iter(module.parameters()), None) if isinstance(module, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def latent_shape(autoencoder) -> tuple[int, int]:
    """(channels, side) of the latents `autoencoder.encode` makes from a 32 × 32 image."""
    z = autoencoder.encode(torch.zeros(1, PIXELS[0], PIXELS[1], PIXELS[1], device=_device_of(autoencoder)))
    if z.dim() != 4 or z.shape[2] != z.shape[3]:
        raise UserError(f"the autoencoder makes latents of shape {tuple(z.shape[1:])}; the UNet needs square C x S x S")
    return int(z.shape[1]), int(z.shape[2])


@torch.no_grad()
def context_width(clip) -> int:
    """H of the caption states `clip.text_states` gives (B, L, H)."""
    states, _ = clip.text_states([""])
    return int(states.shape[-1])


def fingerprint(module) -> str:
    """16 hex digits of sha256 over a frozen part's config and weights: the same folder always gives the
    same, a retrained or rescaled autoencoder another."""
    h = hashlib.sha256()
    config = module.config_dict() if hasattr(module, "config_dict") else getattr(module, "config", None)
    config = asdict(config) if hasattr(config, "__dataclass_fields__") else config
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def match_parts(config: UNetConfig, autoencoder=None, clip=None, where: str = "the UNet",
                context: str = "caption") -> UNetConfig:
    """Fill the config's unset input shape, context width and part fingerprints from the data's parts,
    and refuse parts that do not fit the values it has (a latent UNet with another autoencoder, another
    CLIP), in one line. `context` is what the UNet cross-attends to: the caption's token states, or (unCLIP's
    decoder) the CLIP image embedding."""
    if config.space not in SPACES:
        raise UserError(f"unet.space must be latent or pixel, got {config.space!r}")
    if config.space == "latent":
        if autoencoder is None:
            raise UserError(f"{where} works on latents and needs an autoencoder")
        shape, what = latent_shape(autoencoder), "the autoencoder's latents"
    else:
        shape, what = PIXELS, "pixels"
    have = (config.in_channels, config.image_size)
    if have[0] is not None and have[0] != shape[0] or have[1] is not None and have[1] != shape[1]:
        raise UserError(f"{where} expects inputs of {have[0]} x {have[1]} x {have[1]} but {what} are "
                        f"{shape[0]} x {shape[1]} x {shape[1]}; use the autoencoder it was trained with")
    config.in_channels, config.image_size = shape
    if config.space == "latent":
        config.autoencoder_fingerprint = _same_part(config.autoencoder_fingerprint, autoencoder, "autoencoder", where)
    if clip is not None:
        width = context_width(clip) if context == "caption" else clip.config.embed_dim
        if config.context_dim is not None and config.context_dim != width:
            what = "text tower's states have" if context == "caption" else "image embeddings have"
            raise UserError(f"{where} reads a context of width {config.context_dim} but the CLIP {what} width "
                            f"{width}; use the CLIP model it was trained with")
        config.context_dim = width
        config.clip_fingerprint = _same_part(config.clip_fingerprint, clip, "CLIP model", where)
    return config


def _same_part(expected: Optional[str], part, what: str, where: str) -> str:
    found = fingerprint(part)
    if expected is not None and expected != found:
        raise UserError(f"{where} was trained with another {what} (fingerprint {expected}, this one {found}); "
                        f"use the {what} it was trained with")
    return found
