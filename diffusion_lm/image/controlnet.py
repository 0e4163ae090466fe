"""ControlNet (Zhang et al., 2023): spatial control of a frozen UNet by a trainable copy of its encoder.

    hint (1 × 32 × 32: where the objects are) ─ HintEncoder ─┐ (zero conv)
    x_t ─ copy.conv_in ─────────────────────────────────────(+)─ copy's down path and middle (trainable)
                                                                   │  each skip and the middle output
                                                                   └─ zero 1×1 conv ─► added to the frozen
                                                                      base UNet's skips and middle

* The copy starts as the base UNet's weights (its down path and middle); the base never changes.
* Every path from the hint into the base ends in a convolution whose weights and bias start at zero
  (the hint encoder's last conv and the 1×1 convs on the residuals), so before training the
  controlled UNet *is* the base model, exactly, and training starts from it.
* The hint is a binary object mask rendered at the image's 32 × 32 (`object_mask`): the hint encoder
  brings it to the UNet's input side (stride-2 convs: 8 × 8 for latents, none for pixels).

`ControlledUNet(base, controlnet)` is what the sampler calls: the base UNet's forward with the
ControlNet's residuals times `control_scale` (0 is the base model), so classifier-free guidance and
the core sampler need nothing new: the hint travels in model_kwargs beside the caption.

A folder is config.json (ControlNetConfig, with the base UNet's config and fingerprint) and
model.safetensors (the ControlNet's weights only).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..errors import UserError
from .shapes import BACKGROUND, IMAGE_SIZE
from .unet import UNet, UNetConfig, fingerprint, zero

HINT_SIZE = IMAGE_SIZE


def object_mask(images) -> np.ndarray:
    """uint8 images (N, 32, 32, 3) -> float32 (N, 1, 32, 32): 1 where a pixel is not the background."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (HINT_SIZE, HINT_SIZE, 3):
        raise UserError(f"object masks are made from (N, 32, 32, 3) images, got {images.shape}")
    return (images != np.array(BACKGROUND, np.uint8)).any(-1)[:, None].astype(np.float32)


@dataclass
class ControlNetConfig:
    hint_channels: int = 1  # the object mask
    hint_width: int = 32  # channels of the hint encoder's convs
    # set by the trainer from the base UNet, checked wherever the ControlNet is used
    base: Optional[dict] = field(default=None)  # the base UNet's config (to build the copy)
    base_fingerprint: Optional[str] = None

    def validate(self) -> None:
        for name in ("hint_channels", "hint_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"controlnet.{name} must be a positive integer, got {v!r}")


class HintEncoder(nn.Module):
    """hint (B, hint_channels, 32, 32) -> (B, channels, S, S), S = 32 / 2^k; the last conv starts at zero."""

    def __init__(self, hint_channels: int, width: int, channels: int, side: int):
        super().__init__()
        halvings = int(round(math.log2(HINT_SIZE / side)))
        if side * 2 ** halvings != HINT_SIZE:
            raise UserError(f"a 32 x 32 hint cannot be brought to the UNet's {side} x {side} by halving")
        layers: list[nn.Module] = [nn.Conv2d(hint_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(halvings):
            layers += [nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), zero(nn.Conv2d(width, channels, 3, padding=1))]
        self.net = nn.Sequential(*layers)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.net(hint)


class ControlNet(nn.Module):
    def __init__(self, base: UNet, config: ControlNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        config.base = asdict(base.config)
        self.copy = copy.deepcopy(base)  # the encoder half is used; the up path is dropped
        self.copy.up, self.copy.out = nn.ModuleList(), nn.Identity()
        self.copy.requires_grad_(True)
        c = base.config
        self.hint = HintEncoder(config.hint_channels, config.hint_width, c.channels, c.image_size)
        self.zero_convs = nn.ModuleList(zero(nn.Conv2d(w, w, 1)) for w in base.skip_widths())

    def forward(self, x_t, t, context, context_mask, hint: torch.Tensor) -> list[torch.Tensor]:
        """The residuals for the base UNet: one per skip, then the middle's."""
        if hint.dim() != 4 or hint.shape[1:] != (self.config.hint_channels, HINT_SIZE, HINT_SIZE):
            raise UserError(f"the control map must be ({self.config.hint_channels}, 32, 32) an image, "
                            f"got {tuple(hint.shape[1:])}")
        h, hs, _ = self.copy.encode(x_t, t, context, context_mask, added=self.hint(hint.to(x_t.dtype)))
        return [z(x) for z, x in zip(self.zero_convs, [*hs, h])]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- folders ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                        manifest: dict | None = None, dtype=None) -> Path:
        return io.save_pretrained(directory, asdict(self.config), state_dict or self.state_dict(), manifest=manifest,
                                  dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base: UNet, device: str | torch.device = "cpu") -> "ControlNet":
        """The ControlNet in `directory`, for `base` (refused in one line when it was trained for another)."""
        raw, state = io.load_pretrained(directory, "ControlNet")
        config = io.config_from_dict(ControlNetConfig, raw, str(Path(directory) / "config.json"))
        check_base(config, base, str(directory))
        model = cls(base, ControlNetConfig(config.hint_channels, config.hint_width))
        model.config.base_fingerprint = config.base_fingerprint
        io.load_weights(model, state, str(directory))
        return model.to(device).eval()


def check_base(config: ControlNetConfig, base: UNet, where: str) -> None:
    if config.base is not None and not isinstance(config.base, dict):
        raise UserError(f"{where}: its base UNet config must be a JSON object, got {type(config.base).__name__}")
    if config.base is not None and config.base != asdict(base.config):
        here = asdict(base.config)
        keys = [*config.base, *sorted(set(here) - set(config.base))]  # the config's own order: shapes first
        diff = next((k for k in keys if config.base.get(k) != here.get(k)), "config")
        raise UserError(f"{where} was trained for another UNet (unet.{diff} {config.base.get(diff)!r} there, "
                        f"{asdict(base.config).get(diff)!r} here); use the UNet it was trained with")
    if config.base_fingerprint is not None and config.base_fingerprint != fingerprint(base):
        raise UserError(f"{where} was trained for another UNet (fingerprint {config.base_fingerprint}, this one "
                        f"{fingerprint(base)}); use the UNet it was trained with")


class ControlledUNet(nn.Module):
    """The frozen base UNet steered by a ControlNet: what the sampler calls, with the hint in model_kwargs."""

    def __init__(self, base: UNet, controlnet: ControlNet):
        super().__init__()
        self.base, self.controlnet = base, controlnet

    @property
    def config(self) -> UNetConfig:
        return self.base.config

    def forward(self, x_t, t, context=None, context_mask=None, control: Optional[torch.Tensor] = None,
                control_scale: float = 1.0):
        if control is None or control_scale == 0:
            return self.base(x_t, t, context, context_mask)
        residuals = self.controlnet(x_t, t, context, context_mask, control)
        return self.base(x_t, t, context, context_mask, residuals=[control_scale * r for r in residuals])


def mask_iou(generated: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Per image IoU of the oracle's object pixels (any palette colour) in uint8 `generated` (N, 32, 32, 3)
    with the control masks (N, 1 or nothing, 32, 32); 1 where both are empty."""
    from .oracle import segment

    a = segment(generated) >= 0
    b = np.asarray(control).reshape(a.shape) > 0.5
    inter, union = (a & b).sum((1, 2)), (a | b).sum((1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))
