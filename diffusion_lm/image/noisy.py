"""Models of noisy images x_t that steer sampling through the core's step hook (`core.guidance`).

Both read x_t (the UNet's input: latents or pixels) and the training step t, with a small conv
encoder whose ResBlocks take the timestep embedding as the UNet's do, and both expose the interface
the text classifiers expose, `log_prob(x_t, t, target) -> (B,)`, so `core.ControlGuidance` steers
images with them exactly as it steers sentences with POS and tree classifiers:

* kind `clip` — GLIDE's noised CLIP: an image tower on x_t, trained by InfoNCE against the frozen
  CLIP text tower's caption embeddings. log p(c | x_t) is taken as s · cos(f(x_t, t), g(c)) (s its
  learned logit scale: the log-softmax over captions up to a constant); the target is g(c).
* kind `attributes` — noisy-classifier guidance (Dhariwal & Nichol, 2021): heads for the colour,
  shape, size and position of a one-object scene, trained by cross-entropy; the target names the
  attributes to steer to, e.g. {"colour": "red", "position": "top left"}, and its log_prob is the
  sum of their log-probabilities, so controls compose by summing, as POS + semantic do for text.

A folder is config.json (NoisyConfig) and model.safetensors.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..errors import UserError
from .layers import Downsample
from .shapes import COLOURS, POSITIONS, SHAPES, SIZES
from .unet import SPACES, ResBlock, timestep_embedding

KINDS = ("clip", "attributes")
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}


@dataclass
class NoisyConfig:
    kind: str = "clip"  # clip | attributes
    space: str = "latent"
    in_channels: Optional[int] = None  # set by the trainer from the data (4 latents, 3 pixels)
    image_size: Optional[int] = None
    channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    blocks: int = 1
    groups: int = 16
    embed_dim: Optional[int] = None  # kind clip: the CLIP pair's joint width (set by the trainer)
    # set by the trainer: the noise it learned to read (the UNet's process) and the frozen parts it read
    diffusion_schedule: Optional[str] = None
    diffusion_steps: Optional[int] = None
    autoencoder_fingerprint: Optional[str] = None
    clip_fingerprint: Optional[str] = None

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"classifier.kind must be clip or attributes, got {self.kind!r}")
        if self.space not in SPACES:
            raise UserError(f"classifier.space must be latent or pixel, got {self.space!r}")
        for name in ("in_channels", "image_size", "channels", "blocks", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"classifier.{name} must be a positive integer, got {v!r}")
        if self.kind == "clip" and (not isinstance(self.embed_dim, int) or self.embed_dim < 1):
            raise UserError("classifier.embed_dim is not set (the trainer sets it from the CLIP pair)")
        mult = list(self.channel_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise UserError(f"classifier.channel_mult must be a list of positive integers, got {mult}")
        if any(self.channels * m % self.groups for m in mult):
            raise UserError(f"classifier.groups={self.groups} must divide every level's width")


class NoisyImageModel(nn.Module):
    def __init__(self, config: NoisyConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        temb = 4 * c.channels
        self.time_mlp = nn.Sequential(nn.Linear(c.channels, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        self.body, ch = nn.ModuleList(), c.channels
        for level, m in enumerate(c.channel_mult):
            for _ in range(c.blocks):
                self.body.append(ResBlock(ch, c.channels * m, temb, 0.0, c.groups))
                ch = c.channels * m
            if level < len(c.channel_mult) - 1:
                self.body.append(Downsample(ch))
        self.norm = nn.GroupNorm(c.groups, ch)
        if c.kind == "clip":
            self.head = nn.Linear(ch, c.embed_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), as CLIP starts
        else:
            self.head = nn.Linear(ch, sum(len(v) for v in ATTRIBUTES.values()))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (kind clip) or the attribute logits, concatenated (kind attributes)."""
        c = self.config
        if x_t.dim() != 4 or tuple(x_t.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise UserError(f"this classifier reads x_t of shape ({c.in_channels}, {c.image_size}, {c.image_size}), "
                            f"got {tuple(x_t.shape[1:])}; use one trained in the UNet's space")
        temb = self.time_mlp(timestep_embedding(t, c.channels))
        h = self.conv_in(x_t)
        for layer in self.body:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        out = self.head(F.silu(self.norm(h)).mean((2, 3)))
        return F.normalize(out, dim=-1) if c.kind == "clip" else out

    def scale(self) -> torch.Tensor:
        """Kind clip: the logit scale s (learned, capped at 100 as in training)."""
        return self.logit_scale.exp().clamp(max=100)

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Kind attributes: {attribute: (B, classes)}."""
        out, lo = {}, 0
        flat = self(x_t, t)
        for name, values in ATTRIBUTES.items():
            out[name], lo = flat[:, lo: lo + len(values)], lo + len(values)
        return out

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target) -> torch.Tensor:
        """(B,) log p(target | x_t, t): for kind clip, target is the caption embedding(s) (D,) or (B, D) and
        the value s · cos; for kind attributes, a dict {attribute: value} (or a list of them, one per sample)
        and the sum of the attributes' log-probabilities."""
        if self.config.kind == "clip":
            target = torch.as_tensor(target, device=x_t.device, dtype=x_t.dtype).reshape(-1, self.config.embed_dim)
            if len(target) not in (1, len(x_t)):
                raise UserError(f"a CLIP-guidance target is one caption embedding or one per image, got {len(target)} "
                                f"for {len(x_t)} images")
            return self.scale() * (self(x_t, t) * target).sum(-1)
        targets = target if isinstance(target, (list, tuple)) else [target] * len(x_t)
        index = attribute_index(targets)
        logp = {k: F.log_softmax(v, dim=-1) for k, v in self.logits(x_t, t).items()}
        total = torch.zeros(len(x_t), device=x_t.device, dtype=x_t.dtype)
        for name, rows in index.items():
            rows = rows.to(x_t.device)
            total = total + torch.where(rows >= 0, logp[name].gather(1, rows.clamp_min(0)[:, None].to(x_t.device))[:, 0],
                                        torch.zeros_like(total))
        return total

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                        manifest: dict | None = None) -> Path:
        return io.save_pretrained(directory, asdict(self.config), state_dict or self.state_dict(), manifest=manifest)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "NoisyImageModel":
        return io.load_model(cls, NoisyConfig, directory, "noisy image classifier", device)


def attribute_index(targets: list[dict]) -> dict[str, torch.Tensor]:
    """{attribute: (B,) class index, −1 where that sample does not name it}; unknown names or values fail."""
    out = {}
    for t in targets:
        if not isinstance(t, dict) or not t:
            raise UserError(f"an attribute target is a non-empty mapping such as {{'colour': 'red'}}, got {t!r}")
        for k, v in t.items():
            if k not in ATTRIBUTES:
                raise UserError(f"unknown attribute {k!r}; choose from {', '.join(ATTRIBUTES)}")
            if v not in ATTRIBUTES[k]:
                raise UserError(f"unknown {k} {v!r}; choose from {', '.join(ATTRIBUTES[k])}")
    for name, values in ATTRIBUTES.items():
        rows = [values.index(t[name]) if name in t else -1 for t in targets]
        if any(r >= 0 for r in rows):
            out[name] = torch.tensor(rows)
    return out
