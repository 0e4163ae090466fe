"""The shared trunk of the control classifiers: a t-conditioned transformer over noisy latents.

A classifier sees exactly what the sampler holds at step t: x_t of shape
(B, L, d) in the frozen Diffusion-LM's embedding space, and the training
timestep t. It is tied to that model's embeddings, so it records a
fingerprint of them (`LatentSpace`) and refuses to run beside another model.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from diffusion_lm.distributed import global_mean
from diffusion_lm.errors import UserError
from diffusion_lm.text.model import LIMITS, Block, DiffusionLM, timestep_embedding


@dataclass
class EncoderConfig:
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1

    def validate(self) -> None:
        for name in ("hidden", "layers", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"encoder.{name} must be a positive integer, got {v!r}")
            if v > LIMITS[name]:  # sizes no machine holds: refused before anything is allocated
                raise UserError(f"encoder.{name} must be at most {LIMITS[name]:,}, got {v:,}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"encoder.dropout must be in [0, 1), got {self.dropout!r}")
        if self.hidden % self.heads:
            raise UserError(f"encoder.hidden ({self.hidden}) must be divisible by encoder.heads ({self.heads})")


@dataclass
class LatentSpace:
    """Which Diffusion-LM's latents a classifier reads: shape and an embedding fingerprint."""

    emb_dim: int
    max_len: int
    vocab_size: int
    fingerprint: str

    def validate(self, where: str = "latent space") -> None:
        for name in ("emb_dim", "max_len", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= LIMITS[name]:
                raise UserError(f"{where}: space.{name} must be an integer in 1..{LIMITS[name]:,}, got {v!r}")
        if not isinstance(self.fingerprint, str):
            raise UserError(f"{where}: space.fingerprint must be text, got {self.fingerprint!r}")

    @classmethod
    def of(cls, model: DiffusionLM) -> "LatentSpace":
        c = model.config
        return cls(c.emb_dim, c.max_len, c.vocab_size, embedding_fingerprint(model))

    def check(self, model: DiffusionLM, what: str) -> None:
        other = LatentSpace.of(model)
        if other != self:
            raise UserError(f"{what} was trained on another Diffusion-LM's embeddings "
                            f"(fingerprint {self.fingerprint[:12]}, this model {other.fingerprint[:12]}); "
                            "train it for this model with diffusion-lm train-classifier")


def embedding_fingerprint(model: DiffusionLM) -> str:
    # fp16 bytes: the fp32 run and its fp16 shipped copy share a fingerprint.
    w = model.embedding.weight.detach().to("cpu", torch.float16).contiguous()
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()


def position_loss(logits: torch.Tensor, labels: torch.Tensor, total=None) -> torch.Tensor:
    """Cross-entropy of per-position class logits (B, L, C) against labels (B, L), −1 ignored: the mean over
    the labelled positions, or (under torchrun) this rank's share of the mean over `total` labelled positions
    of the global batch (diffusion_lm.distributed.global_mean)."""
    if total is None:
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-1, reduction="sum")
    return global_mean(ce, total)


def position_total(labels: torch.Tensor, rows) -> int:
    """How many positions of `rows` carry a label: what position_loss's mean runs over."""
    return int((labels[rows] >= 0).sum())


@torch.no_grad()
def position_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    keep = labels >= 0
    return 100.0 * (logits.argmax(-1)[keep] == labels[keep]).float().mean().item()


def collate_rows(labels: torch.Tensor, rows, device=None) -> torch.Tensor:
    return labels[rows].to(device)


class LatentEncoder(nn.Module):
    """(x_t, t) → contextual features h of shape (B, L, hidden)."""

    def __init__(self, space: LatentSpace, cfg: EncoderConfig):
        super().__init__()
        space.validate()
        cfg.validate()
        self.cfg = cfg
        self.input_proj = nn.Linear(space.emb_dim, cfg.hidden)
        self.pos_emb = nn.Parameter(torch.zeros(1, space.max_len, cfg.hidden))
        nn.init.normal_(self.pos_emb, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.hidden, 2 * cfg.hidden), nn.SiLU(),
                                      nn.Linear(2 * cfg.hidden, cfg.hidden))
        self.blocks = nn.ModuleList(Block(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.hidden)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        L = x_t.shape[1]
        h = self.input_proj(x_t) + self.pos_emb[:, :L]
        h = h + self.time_mlp(timestep_embedding(t, self.cfg.hidden))[:, None, :]
        for block in self.blocks:
            h = block(h)
        return self.norm(h)
