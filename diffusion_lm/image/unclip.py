"""unCLIP (Ramesh et al., 2022, DALL·E 2) on the shared core: a diffusion prior over CLIP image embeddings
and a decoder UNet conditioned on them.

    caption ─ CLIP text tower ─ text embedding y (D,) ─ prior: x_T ~ N(0, I) ... x_0 = image embedding (D,)
            ─ decoder UNet: latents | image embedding ─ autoencoder ─ image

* Vectors are the third tensor shape through the one core (after text (B, L, H) and images (B, C, S, S)):
  the prior is sampled by `core.sample` on shape (B, D), with classifier-free guidance on y.
* Embeddings are unit-norm; the diffusion runs on them times √D, so that each coordinate has about unit
  variance as the noise assumes (DALL·E 2 scales its CLIP embeddings the same way), and a sampled x_0 is
  projected back onto the unit sphere, where CLIP's embeddings live.
* The prior (`DiffusionPrior`) is a residual MLP predicting x_0 directly, as DALL·E 2's prior does: each
  block is LayerNorm, then a scale and shift from the embedding of t and y (adaLN), then an MLP. The null
  condition ∅ is y = 0, the value training drops the text embedding to (10% of the time).
* The decoder is the caption UNet with one context token, the image embedding times √D (∅ a zero
  token), trained by `train-unet train.condition=image_embedding`; its folder says so in conditioning.json,
  so that a caption pipeline refuses it and the unCLIP pipeline refuses a caption UNet.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..errors import UserError
from .unet import timestep_embedding

CONDITIONS = ("caption", "image_embedding")  # what a UNet's context is: caption token states, or unCLIP's embedding
CONDITIONING_FILE = "conditioning.json"


def embedding_scale(dim: int) -> float:
    """√D: unit-norm embeddings times this have coordinates of about unit variance."""
    return math.sqrt(dim)


def embedding_context(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's context of unit-norm image embeddings (B, D): one token (B, 1, D) of emb·√D, and its
    mask (B, 1) (all True; the null ∅ is a zero token)."""
    if emb.dim() != 2:
        raise UserError(f"image embeddings must be (B, D), got {tuple(emb.shape)}")
    return emb[:, None, :] * embedding_scale(emb.shape[-1]), torch.ones(emb.shape[0], 1, dtype=torch.bool,
                                                                          device=emb.device)


def write_conditioning(directory: str | os.PathLike, condition: str, clip_fingerprint: Optional[str]) -> None:
    io.save_json(Path(directory) / CONDITIONING_FILE, {"condition": condition, "clip_fingerprint": clip_fingerprint})


def read_conditioning(directory: str | os.PathLike) -> str:
    """What a UNet folder's context is: `caption` (no conditioning.json, every caption UNet) or what the file says."""
    path = Path(directory) / CONDITIONING_FILE
    if not path.is_file():
        return "caption"
    raw = io.load_json(path)
    condition = raw.get("condition") if isinstance(raw, dict) else None
    if condition not in CONDITIONS:
        raise UserError(f"{path}: condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
    return condition


@torch.no_grad()
def image_embeddings(clip, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """CLIP image embeddings (N, D) of images in [−1, 1] (N, 3, H, W), on the CPU."""
    return torch.cat([clip.encode_image(images[k: k + batch_size].to(clip.device)).float().cpu()
                      for k in range(0, len(images), batch_size)])


@torch.no_grad()
def text_embeddings(clip, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    return torch.cat([clip.encode_text(captions[k: k + batch_size]).float().cpu()
                      for k in range(0, len(captions), batch_size)])


# ---- the prior -----------------------------------------------------------------------------------
@dataclass
class PriorConfig:
    embed_dim: Optional[int] = None  # D of the CLIP embeddings (null: the trainer's CLIP)
    width: int = 256
    depth: int = 4  # residual blocks
    dropout: float = 0.0
    clip_fingerprint: Optional[str] = None  # the CLIP it maps between, checked wherever it is used

    def validate(self) -> None:
        if self.embed_dim is None:
            raise UserError("prior.embed_dim is not set (the trainer sets it from the CLIP model)")
        for name in ("embed_dim", "width", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"prior.{name} must be a positive integer, got {v!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"prior.dropout must be in [0, 1), got {self.dropout!r}")


class PriorBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(F.silu(cond)).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class DiffusionPrior(nn.Module):
    """x̂_0 (B, D) of noisy scaled image embeddings x_t (B, D) at steps t (B,), given scaled text embeddings
    `text` (B, D) (zeros: the null ∅)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.inp = nn.Linear(c.embed_dim, c.width)
        self.time = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.text = nn.Linear(c.embed_dim, c.width)
        self.blocks = nn.ModuleList(PriorBlock(c.width, c.dropout) for _ in range(c.depth))
        self.out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.embed_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        D = self.config.embed_dim
        if x_t.dim() != 2 or x_t.shape[1] != D or text.shape != x_t.shape:
            raise UserError(f"the prior reads x_t and text embeddings of shape (B, {D}), got "
                            f"{tuple(x_t.shape)} and {tuple(text.shape)}")
        cond = self.time(timestep_embedding(t, self.config.width)) + self.text(text)
        h = self.inp(x_t)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory, diffusion, state_dict=None, manifest: dict | None = None) -> Path:
        """config.json + model.safetensors, and the process as diffusion.json (as a UNet folder)."""
        from ..core import save_diffusion_config

        cfg = diffusion.config if hasattr(diffusion, "config") else diffusion
        save_diffusion_config(directory, cfg)
        return io.save_pretrained(directory, asdict(self.config), state_dict or self.state_dict(), manifest=manifest)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "DiffusionPrior":
        return io.load_model(cls, PriorConfig, directory, "prior", device)


def prior_loss(prior: DiffusionPrior, diffusion, image: torch.Tensor, text: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """|x_0 − x̂_0(x_t, t, y)|² over scaled unit-norm embeddings, with y set to ∅ = 0 where `dropped`."""
    s = embedding_scale(image.shape[-1])
    x0 = image * s
    y = torch.where(dropped[:, None], torch.zeros_like(text), text * s)
    return F.mse_loss(prior(diffusion.q_sample(x0, t, noise), t, y), x0)


@torch.no_grad()
def sample_prior(prior: DiffusionPrior, diffusion, text: torch.Tensor, *, guidance: float = 1.0, steps: int = 50,
                 generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                 batch_size: int = 1024) -> torch.Tensor:
    """Unit-norm image embeddings (B, D) drawn by the prior for unit-norm text embeddings (B, D): DDIM
    through the core's one loop over vectors, classifier-free guided with weight `guidance` (∅ = 0)."""
    from ..core import ClassifierFreeGuidance, sample

    D = prior.config.embed_dim
    if text.dim() != 2 or text.shape[1] != D:
        raise UserError(f"the prior reads text embeddings of shape (B, {D}), got {tuple(text.shape)}")
    device = next(prior.parameters()).device
    respaced = diffusion.respace(steps)
    guided = ClassifierFreeGuidance(prior, guidance, {"text": torch.zeros(1, D, device=device)})
    if noise is None:
        noise = torch.randn(text.shape, generator=generator)
    out = []
    for lo in range(0, len(text), batch_size):
        y = text[lo: lo + batch_size].to(device) * embedding_scale(D)
        x0 = sample(guided, respaced, tuple(y.shape), sampler="ddim", prediction="x0", noise=noise[lo: lo + batch_size],
                    device=device, progress=False, model_kwargs={"text": y})
        out.append(F.normalize(x0, dim=-1).cpu())
    return torch.cat(out)
