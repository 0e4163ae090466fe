"""Hard constraints through the core's masked replacement: length control and infilling.

Both fix some positions of x_0 to word embeddings and let the sampler hold
them there (noised to each step's level, so the denoiser sees what it saw in
training). No classifier is needed: length = [START] w_1 … w_n [END] [PAD] …,
with START, END and the PADs fixed; infilling fixes the given context words.
"""
from __future__ import annotations

import torch

from ..core import Known
from ..errors import UserError
from .model import DiffusionLM
from .tokenizer import WordTokenizer


def words_only(known: Known, tokenizer: WordTokenizer, vocab_size: int) -> torch.Tensor:
    """An `exclude` mask for rounding: no PAD, START or END at the positions a constraint leaves free.

    Without it a free position may round to PAD or END and cut the sentence
    short of its target length.
    """
    special = torch.zeros(vocab_size, dtype=torch.bool, device=known.mask.device)
    special[[tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id]] = True
    return ~known.mask & special


def _known(model: DiffusionLM, ids: torch.Tensor, mask: torch.Tensor) -> Known:
    device = next(model.parameters()).device
    with torch.no_grad():
        values = model.embed(ids.clamp_min(0).to(device))
    return Known(values=values, mask=mask.to(device)[..., None])


def length_constraint(model: DiffusionLM, tokenizer: WordTokenizer, lengths: list[int]) -> Known:
    """Sentences of exactly n words each: START at 0, END at n+1, PAD after."""
    L = model.config.max_len
    ids = torch.full((len(lengths), L), -1, dtype=torch.long)
    for b, n in enumerate(lengths):
        if not isinstance(n, int) or not 1 <= n <= L - 2:
            raise UserError(f"length target {n!r} out of range 1..{L - 2} for this model (max_len {L})")
        ids[b, 0], ids[b, n + 1], ids[b, n + 2:] = tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id
    return _known(model, ids, ids >= 0)


def trim_padding(model: DiffusionLM, tokenizer: WordTokenizer, known: Known, margin: int) -> Known:
    """The constraint cut to the positions worth sampling: up to the last one that some row does not hold as
    PAD (START … END of the batch's longest sentence), plus `margin` PAD positions."""
    with torch.no_grad():
        pad = model.embed(torch.tensor([tokenizer.pad_id], device=known.values.device))[0]
    is_pad = known.mask[..., 0] & (known.values == pad).all(-1)  # (B, L): held as PAD
    tail = is_pad.all(0).flip(0).cumprod(0).sum()  # trailing positions that are PAD in every row
    length = min(is_pad.shape[1], int(is_pad.shape[1] - tail) + margin)
    return Known(values=known.values[:, :length], mask=known.mask[:, :length], noised=known.noised,
                 resample=known.resample)


def infill_constraint(model: DiffusionLM, tokenizer: WordTokenizer, left: str, right: str, n_middle: int,
                      batch: int) -> Known:
    """left words, n_middle free positions, right words, END, PAD: the model fills the middle."""
    L = model.config.max_len
    lw, rw = left.split(), right.split()
    total = 1 + len(lw) + n_middle + len(rw) + 1
    if n_middle < 1 or total > L:
        raise UserError(f"infilling needs 1 <= middle and {len(lw)} + middle + {len(rw)} words <= {L - 2}")
    unknown = [w for w in lw + rw if tokenizer.word_id(w) is None]
    if unknown:
        raise UserError(f"context word {unknown[0]!r} is not in the model's vocabulary")
    row = ([tokenizer.start_id] + [tokenizer.word_id(w) for w in lw] + [-1] * n_middle
           + [tokenizer.word_id(w) for w in rw] + [tokenizer.end_id] + [tokenizer.pad_id] * (L - total))
    ids = torch.tensor(row).expand(batch, L)
    return _known(model, ids, ids >= 0)
