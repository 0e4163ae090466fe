"""A CLIP pair trained here (Radford et al., 2021): a conv image tower and a caption transformer, InfoNCE.

    image (B, 3, 32, 32) ─ conv_in, [ResBlock × blocks, stride-2 conv] per level, GroupNorm → SiLU,
                           mean over the grid ─ features (B, F) ─ linear ─ normalise ─ (B, D)
    caption ─ words ─ ids [<bos> w_1 .. w_n <eos> <pad> ..] (B, max_len) ─ token + position embedding,
              pre-norm transformer (bidirectional, padding masked), final LayerNorm ─ states (B, L, H)
              ─ mean over the real tokens ─ linear ─ normalise ─ (B, D)

The loss is the symmetric InfoNCE of the B × B similarities times a learned temperature
exp(logit_scale) (initialised at 1/0.07, capped at 100 as CLIP's). Captions repeated inside a batch
are all positives of each other's images (the target row is spread over them), so that a batch with
two "a red circle" does not push a true pair apart.

`text_states` (the last layer's token states and the real-token mask) is what conditions the UNet's
cross-attention; the empty caption "" is [<bos> <eos>], a valid input whose states are the
unconditional ∅ of classifier-free guidance. `image_features` are the pre-projection features
(for a Fréchet distance). The vocabulary is closed: shapes.VOCAB after the special tokens; an unknown
word is a one-line UserError naming it.

A folder is config.json (ClipConfig) and model.safetensors.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import io
from ..errors import UserError
from .autoencoder import Downsample, ResBlock
from .shapes import IMAGE_SIZE, MAX_WORDS, VOCAB

LATER_OPTIONS = {"lexical_states": False, "image_pool": "mean"}  # ClipConfig keys newer than the shipped CLIP
SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2
MAX_SCALE = 100.0  # exp(logit_scale) is capped here (CLIP's clamp)


class CaptionTokenizer:
    """Words of the closed caption vocabulary <-> ids, with <pad>, <bos> and <eos>."""

    def __init__(self, max_len: int = MAX_WORDS + 2):
        self.words = list(SPECIALS) + list(VOCAB)
        self.ids = {w: k for k, w in enumerate(self.words)}
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str) -> list[int]:
        if not isinstance(caption, str):
            raise UserError(f"a caption must be a string, got {type(caption).__name__}")
        words = caption.lower().split()
        for w in words:
            if w not in self.ids or w in SPECIALS:
                raise UserError(f"unknown word {w!r} in caption {caption!r}; known words: {' '.join(VOCAB)}")
        if len(words) + 2 > self.max_len:
            raise UserError(f"caption {caption!r} has {len(words)} words; the CLIP text tower takes at most "
                            f"{self.max_len - 2}")
        return [BOS] + [self.ids[w] for w in words] + [EOS]

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_len) long, mask (B, max_len) bool, True at real tokens <bos> .. <eos>)."""
        if isinstance(captions, str):
            captions = [captions]
        rows = [self.encode(c) for c in captions]
        ids = torch.full((len(rows), self.max_len), PAD, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = torch.tensor(r)
        return ids, ids != PAD

    def decode(self, ids) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) not in (PAD, BOS, EOS))


@dataclass
class ClipConfig:
    embed_dim: int = 128  # the joint embedding
    # image tower
    image_channels: int = 32
    image_mult: List[int] = field(default_factory=lambda: [1, 2, 4])  # 32 -> 16 -> 8 at widths 32, 64, 128
    image_blocks: int = 1
    groups: int = 8
    # text tower
    width: int = 128  # H of the token states the UNet attends to
    layers: int = 3
    heads: int = 4
    mlp_ratio: int = 4
    max_len: int = MAX_WORDS + 2  # <bos> + the longest caption + <eos>
    init_temperature: float = 0.07
    # what conditions a UNet (text_states; training is the same either way): false, the last layer's token
    # states; true, those followed by each word's own input embedding (token + position, layer-normed), so
    # cross-attention can read a word apart from the context the contrastive tower mixed into its state
    lexical_states: bool = False
    # how the image tower pools its last grid into features: mean (translation-invariant: where things are
    # is lost but for what the receptive fields span) | attention (CLIP's: a query, the grid's mean, attends
    # over the grid with learned position embeddings, so left of / right of can reach the embedding)
    image_pool: str = "mean"

    def validate(self) -> None:
        for name in ("embed_dim", "image_channels", "image_blocks", "groups", "width", "layers", "heads",
                     "mlp_ratio", "max_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"clip.{name} must be a positive integer, got {v!r}")
        mult = list(self.image_mult)
        if not mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
            raise UserError(f"clip.image_mult must be a list of positive integers, got {mult}")
        if any((self.image_channels * m) % self.groups for m in mult):
            raise UserError(f"clip.groups={self.groups} must divide every image level's width")
        if self.width % self.heads:
            raise UserError(f"clip.heads={self.heads} must divide clip.width={self.width}")
        if self.max_len < 2:
            raise UserError("clip.max_len must be at least 2 (<bos> and <eos>)")
        if self.image_pool not in ("mean", "attention"):
            raise UserError(f"clip.image_pool must be mean or attention, got {self.image_pool!r}")
        if not isinstance(self.lexical_states, bool):
            raise UserError(f"clip.lexical_states must be true or false, got {self.lexical_states!r}")
        if not 0 < self.init_temperature < 1:
            raise UserError(f"clip.init_temperature must be in (0, 1), got {self.init_temperature!r}")


class ImageTower(nn.Module):
    def __init__(self, c: ClipConfig):
        super().__init__()
        widths = [c.image_channels * m for m in c.image_mult]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        layers, ch = [], widths[0]
        for level, w in enumerate(widths):
            for _ in range(c.image_blocks):
                layers.append(ResBlock(ch, w, c.groups))
                ch = w
            if level < len(widths) - 1:
                layers.append(Downsample(ch))
        self.body = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(c.groups, ch)
        self.features = ch
        self.pool = None
        if c.image_pool == "attention":
            side = IMAGE_SIZE // 2 ** (len(widths) - 1)
            self.position = nn.Parameter(torch.randn(side * side + 1, ch) / ch ** 0.5)
            heads = max(h for h in (8, 4, 2, 1) if ch % h == 0)
            self.pool = nn.MultiheadAttention(ch, heads, batch_first=True)

    def forward(self, x):
        return self.pooled(F.silu(self.norm(self.body(self.conv_in(x)))))

    def pooled(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, side, side) -> (B, C): the mean over the grid, or attention pooling."""
        if self.pool is None:
            return h.mean((2, 3))
        grid = h.flatten(2).transpose(1, 2)  # (B, side², C)
        if grid.shape[1] + 1 != self.position.shape[0]:
            raise UserError(f"the CLIP image tower with attention pooling takes {IMAGE_SIZE} x {IMAGE_SIZE} images, "
                            f"got a {h.shape[2]} x {h.shape[3]} last grid")
        tokens = torch.cat([grid.mean(1, keepdim=True), grid], 1) + self.position
        return self.pool(tokens[:, :1], tokens, tokens, need_weights=False)[0][:, 0]


class TextBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h, pad):
        a = self.ln1(h)
        h = h + self.attn(a, a, a, key_padding_mask=pad, need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


def info_nce(logits: torch.Tensor, groups: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None,
             extra_groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE of a (B, B) image × text logit matrix: the mean of the cross-entropies of the
    rows (image -> text) and of the columns (text -> image). Without `groups` the positives are the
    diagonal; with `groups` (B,) (e.g. caption ids) every pair in the same group is a positive and the
    target is uniform over them. `extra` (B, N) are more text columns for the rows only (hard negatives:
    captions no image is paired with), `extra_groups` (N,) their groups: one in a row's group is a positive."""
    B = logits.shape[0]
    if groups is None and extra is None:
        target = torch.arange(B, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    if groups is None:
        groups = torch.arange(B, device=logits.device)
    columns, row_logits = groups, logits
    if extra is not None:
        columns, row_logits = torch.cat([groups, extra_groups]), torch.cat([logits, extra], dim=1)
    same = (groups[:, None] == columns[None, :]).to(logits.dtype)
    rows = -(same / same.sum(1, keepdim=True) * F.log_softmax(row_logits, dim=1)).sum(1).mean()
    pairs = same[:, :B]  # symmetric: the same for the columns
    cols = -(pairs / pairs.sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (rows + cols)


class ClipModel(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.tokenizer = CaptionTokenizer(c.max_len)
        self.image = ImageTower(c)
        self.image_proj = nn.Linear(self.image.features, c.embed_dim, bias=False)
        self.token = nn.Embedding(len(self.tokenizer), c.width)
        self.position = nn.Parameter(torch.randn(c.max_len, c.width) * 0.01)
        self.blocks = nn.ModuleList(TextBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.text_proj = nn.Linear(c.width, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))
        nn.init.normal_(self.token.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.position.device

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_len), mask (B, max_len) True at real tokens), on the model's device."""
        ids, mask = self.tokenizer(captions)
        return ids.to(self.device), mask.to(self.device)

    # ---- the text tower -----------------------------------------------------------------------
    def text_states(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's token states (B, max_len, width) and the mask (B, max_len), True at real
        tokens (padding states are zeroed). "" gives [<bos> <eos>]: the unconditional states. With
        `lexical_states` the words' own input embeddings (layer-normed) follow: (B, 2 max_len, width)."""
        ids, mask = self.tokenize(captions)
        states = self._states(ids, mask)
        if not self.config.lexical_states:
            return states, mask
        words = F.layer_norm(self.token(ids) + self.position[: ids.shape[1]], (self.config.width,)) * mask[..., None]
        return torch.cat([states, words], 1), torch.cat([mask, mask], 1)

    def _states(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.token(ids) + self.position[: ids.shape[1]]
        for block in self.blocks:
            h = block(h, ~mask)
        return self.ln_final(h) * mask[..., None]

    def _text_embedding(self, ids, mask):
        states = self._states(ids, mask)
        pooled = states.sum(1) / mask.sum(1, keepdim=True)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Unit-norm caption embeddings (B, embed_dim)."""
        return self._text_embedding(*self.tokenize(captions))

    # ---- the image tower ----------------------------------------------------------------------
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B, F) of images in [−1, 1] (B, 3, H, W) (for a Fréchet distance)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserError(f"the CLIP image tower takes images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return self.image(x)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, embed_dim) of images in [−1, 1] (B, 3, H, W)."""
        return F.normalize(self.image_proj(self.image_features(x)), dim=-1)

    # ---- training -------------------------------------------------------------------------------
    def temperature_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=MAX_SCALE)

    def loss(self, x: torch.Tensor, captions: Sequence[str],
             negatives: Optional[Sequence[str]] = None) -> tuple[torch.Tensor, dict]:
        """(loss, {loss, scale, acc[, neg_acc]}): the symmetric InfoNCE of a batch of pairs (repeated captions
        are shared positives), the temperature's inverse and the in-batch image -> text top-1. `negatives`
        (hard negatives, e.g. data.hard_negative of each caption) are extra captions that every image is
        contrasted with (image -> text only: no image is theirs); neg_acc is the share of images scored
        above their own negative."""
        ids, mask = self.tokenize(captions)
        img, txt = self.encode_image(x), self._text_embedding(ids, mask)
        if not negatives:
            return self.pair_loss(img, txt, ids)
        neg_ids, neg_mask = self.tokenize(negatives)
        return self.pair_loss(img, txt, ids, self._text_embedding(neg_ids, neg_mask), neg_ids)

    def pair_loss(self, img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor, neg: Optional[torch.Tensor] = None,
                  neg_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
        """`loss` from the pairs' image and text embeddings (B, D) and caption ids (B, L): under torchrun the
        embeddings gathered from every rank (diffusion_lm.distributed.gather_with_grad). With `neg` (N, D)
        and `neg_ids` (N, L) the image -> text rows also range over the negatives (a negative that is some
        pair's caption is that image's positive too)."""
        scale = self.temperature_scale()
        logits = scale * img @ txt.t()
        B = logits.shape[0]
        _, groups = torch.unique(ids if neg is None else torch.cat([ids, neg_ids]), dim=0, return_inverse=True)
        extra = None if neg is None else scale * img @ neg.t()
        loss = info_nce(logits, groups[:B], extra, groups[B:])
        with torch.no_grad():
            scores = logits if extra is None else torch.cat([logits, extra], dim=1)
            terms = {"loss": loss, "scale": scale.detach(), "acc": (groups[scores.argmax(1)] == groups[:B]).float().mean()}
            if extra is not None and neg.shape[0] == B:  # negative k is pair k's; one equal to its caption is not counted
                real = groups[B:] != groups[:B]
                wins = logits.diagonal() > extra.diagonal()
                terms["neg_acc"] = wins[real].float().mean() if real.any() else terms["acc"]
        return loss, terms

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- folders --------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """The config as saved and fingerprinted. Options added after the first CLIPs shipped are left out
        while at their defaults, so a UNet's record of its CLIP (unet.fingerprint) still matches a CLIP
        saved before they existed."""
        return {k: v for k, v in asdict(self.config).items() if not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])}

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                        manifest: dict | None = None) -> Path:
        return io.save_pretrained(directory, self.config_dict(), state_dict or self.state_dict(), manifest=manifest)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "ClipModel":
        return io.load_model(cls, ClipConfig, directory, "CLIP model", device)


# ---- metrics -------------------------------------------------------------------------------------
@torch.no_grad()
def clip_score(clip: ClipModel, x: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
    """CLIP score of each (image, caption) pair: 100 × max(cos, 0) of their embeddings (as torchmetrics'
    CLIPScore); x in [−1, 1] (B, 3, H, W); (B,)."""
    cos = (clip.encode_image(x) * clip.encode_text(list(captions))).sum(-1)
    return 100 * cos.clamp_min(0)


def retrieval_scores(sim: torch.Tensor, captions: Sequence[str]) -> dict:
    """Top-1 / top-5 of a (N, N) image × caption similarity matrix whose diagonal holds the true pairs, both
    ways (image -> text over the rows, text -> image over the columns). A caption text repeated in the set
    is a hit for every image it belongs to."""
    captions = list(captions)
    index = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    g = torch.tensor([index[c] for c in captions], device=sim.device)
    same = g[:, None] == g[None, :]

    def topk(s, k):
        k = min(k, s.shape[1])
        return float(same.gather(1, s.topk(k, dim=1).indices).any(1).float().mean())

    return {"n": len(captions), "image_to_text_top1": round(topk(sim, 1), 4),
            "image_to_text_top5": round(topk(sim, 5), 4), "text_to_image_top1": round(topk(sim.t(), 1), 4),
            "text_to_image_top5": round(topk(sim.t(), 5), 4)}


@torch.no_grad()
def retrieval(clip: ClipModel, x: torch.Tensor, captions: Sequence[str]) -> dict:
    """Zero-shot retrieval among the given pairs (images x in [−1, 1] and their captions): for each image,
    rank every caption of the set, and for each caption every image (`retrieval_scores`)."""
    return retrieval_scores(clip.encode_image(x) @ clip.encode_text(list(captions)).t(), captions)
