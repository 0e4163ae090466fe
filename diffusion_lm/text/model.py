"""Diffusion-LM: learned word embeddings EMB, a transformer denoiser f_θ(x_t, t) → x̂_0,
and rounding p_θ(w | x) with EMB as the output layer.

A model is read in one sitting: embedding, time and position embeddings, a
pre-norm transformer, projections in and out. It saves as config.json +
model.safetensors (see `io.py`). The diffusion it was trained with is not part
of it: that is a `core.GaussianDiffusion`, saved beside it as diffusion.json;
`diffusion_config` gives Diffusion-LM's own choice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import DiffusionConfig
from ..errors import UserError


def diffusion_config(schedule: str = "sqrt", steps: int = 2000) -> DiffusionConfig:
    """Diffusion-LM's process (Li et al., 2022): the sqrt schedule with T = 2000."""
    return DiffusionConfig(schedule=schedule, steps=steps)


# Upper bounds on a model's sizes: far above any Diffusion-LM, far below what would exhaust memory.
LIMITS = {"vocab_size": 10_000_000, "max_len": 4096, "emb_dim": 65536, "hidden": 65536, "layers": 1024,
          "heads": 4096, "mlp_ratio": 64}
MAX_PARAMETERS = 4 * 10 ** 9


@dataclass
class DiffusionLMConfig:
    vocab_size: int = 0  # set from the tokenizer
    max_len: int = 64  # padded sequence length
    emb_dim: int = 16  # d of EMB(w); the paper's choice for E2E
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    self_condition: bool = False  # feed the previous x̂_0 back in (Chen et al., 2022)

    def validate(self) -> None:
        for name in ("vocab_size", "max_len", "emb_dim", "hidden", "layers", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"model.{name} must be an integer, got {v!r}")
        if self.vocab_size < 5:
            raise UserError(f"model.vocab_size must be at least 5, got {self.vocab_size}")
        for name in ("max_len", "emb_dim", "hidden", "layers", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be a positive integer, got {getattr(self, name)}")
        for name, most in LIMITS.items():  # sizes no machine holds: refused before anything is allocated
            if getattr(self, name) > most:
                raise UserError(f"model.{name} must be at most {most:,}, got {getattr(self, name):,}")
        if self.hidden % self.heads:
            raise UserError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.self_condition, bool):
            raise UserError(f"model.self_condition must be true or false, got {self.self_condition!r}")
        h = self.hidden
        size = self.vocab_size * self.emb_dim + self.max_len * h + self.layers * (4 + 2 * self.mlp_ratio) * h * h + 7 * h * h
        if size > MAX_PARAMETERS:
            raise UserError(f"model of about {size:.1e} parameters is too large (at most {MAX_PARAMETERS:.0e})")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the integer timestep, as in the Transformer's positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(), nn.Linear(mlp_ratio * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, L, H = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        # Bidirectional attention: every position sees the whole noisy sentence.
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, H)))
        return h + self.drop(self.mlp(self.norm2(h)))


class DiffusionLM(nn.Module):
    def __init__(self, config: DiffusionLMConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.emb_dim)
        nn.init.normal_(self.embedding.weight, std=1.0)
        in_dim = c.emb_dim * (2 if c.self_condition else 1)
        self.input_proj = nn.Sequential(nn.Linear(in_dim, c.hidden), nn.Tanh(), nn.Linear(c.hidden, c.hidden))
        self.time_mlp = nn.Sequential(nn.Linear(c.hidden, 4 * c.hidden), nn.SiLU(), nn.Linear(4 * c.hidden, c.hidden))
        self.pos_emb = nn.Parameter(torch.zeros(1, c.max_len, c.hidden))
        nn.init.normal_(self.pos_emb, std=0.02)
        self.norm_in = nn.LayerNorm(c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.hidden, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers))
        self.norm_out = nn.LayerNorm(c.hidden)
        self.output_proj = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.Tanh(), nn.Linear(c.hidden, c.emb_dim))

    # ---- the three pieces of Diffusion-LM ------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """EMB(w): (B, L) ids → (B, L, d)."""
        return self.embedding(ids)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x0_prev: torch.Tensor | None = None) -> torch.Tensor:
        """f_θ(x_t, t) → x̂_0, shape (B, L, d). `x0_prev` is the self-conditioning input."""
        if x_t.dim() != 3 or x_t.shape[-1] != self.config.emb_dim or x_t.shape[1] > self.config.max_len:
            raise ValueError(f"expected x_t of shape (B, L<={self.config.max_len}, {self.config.emb_dim}), "
                             f"got {tuple(x_t.shape)}")
        if self.config.self_condition:
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev], dim=-1)
        L = x_t.shape[1]
        h = self.input_proj(x_t) + self.pos_emb[:, :L]
        h = h + self.time_mlp(timestep_embedding(t, self.config.hidden))[:, None, :]
        h = self.drop(self.norm_in(h))
        for block in self.blocks:
            h = block(h)
        return self.output_proj(self.norm_out(h))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Rounding p_θ(w | x) ∝ exp(−‖x − EMB(w)‖²): (B, L, d) → (B, L, V).

        Negative squared distance rather than a dot product, so the most likely
        word is exactly the nearest embedding, the one clamping picks.
        """
        E = self.embedding.weight
        return 2 * x @ E.t() - (E * E).sum(-1) - (x * x).sum(-1, keepdim=True)

    @torch.no_grad()
    def clamp(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """The clamping trick: map every vector to its nearest word embedding (exact rows of EMB)."""
        return self.embedding.weight[self.round(x, exclude)]

    @torch.no_grad()
    def round(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """argmax_w p_θ(w | x): the nearest word for every position.

        `exclude` (bool, broadcastable to (B, L, V)) rules words out where True,
        e.g. PAD/END inside the span a length constraint leaves free.
        """
        logits = self.logits(x)
        if exclude is not None:
            logits = logits.masked_fill(exclude, float("-inf"))
        return logits.argmax(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config_dict(self) -> dict:
        return asdict(self.config)
