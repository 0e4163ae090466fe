"""Semantic-content control: does the sentence state a field's value?

The classifier is a t-conditioned word predictor over latents, p(w_i | x_t),
and a value's words w_1..w_k are stated if they appear at some run of
positions s..s+k−1:

    p(stated | x_t) = 1 − Π_s (1 − Π_j p(w_{s+j} = value word j | x_t))

(a noisy-OR over start positions; words match case-insensitively, as the
metric does). The paper used a left-to-right classifier of the whole
sentence; a first version here (a pooled multi-label head, one logit per
value) reached 45% success on 20 shipped targets at its best λ, because its
gradient only said "more of this value, somewhere". Asking for the value's
words at the positions most ready to hold them gives the sampler the same
kind of per-position pull that makes POS control work, and it can state any
value whose words the model knows. The predictor trains on the sentences'
own words: no oracle is needed, the E2E MRs only list the (field, value)
pairs that targets may name.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from diffusion_lm.data.e2e import UNSTATED_FIELDS, mr_pairs, value_words
from diffusion_lm.errors import UserError
from diffusion_lm.tasks import parse_semantic_target

from .encoder import (EncoderConfig, LatentEncoder, LatentSpace, collate_rows, position_accuracy, position_loss,
                      position_total)

SKIP_FIELDS = UNSTATED_FIELDS  # yes/no: the value's words never appear as such
SPECIAL = ("[PAD]", "[START]", "[END]")


class SemanticClassifier(nn.Module):
    kind = "semantic"

    def __init__(self, space: LatentSpace, encoder: EncoderConfig, words: list[str], pairs: list[str]):
        super().__init__()
        if len(words) != space.vocab_size:
            raise UserError(f"semantic classifier: {len(words)} vocabulary words for a model of {space.vocab_size}")
        self.space, self.words, self.pairs = space, list(words), sorted(pairs)
        self._id = {w: i for i, w in enumerate(self.words)}
        self.encoder = LatentEncoder(space, encoder)
        self.head = nn.Linear(encoder.hidden, len(self.words))
        lower = [w.lower() for w in self.words]
        self._by_lower: dict[str, list[int]] = {}
        for i, w in enumerate(lower):
            self._by_lower.setdefault(w, []).append(i)

    def extra_config(self) -> dict:
        return {"words": self.words, "pairs": self.pairs}

    @classmethod
    def for_data(cls, space: LatentSpace, encoder: EncoderConfig, oracle_rows: list, min_count: int = 0,
                 tokenizer=None) -> "SemanticClassifier":
        """The vocabulary in id order, and every (field, value) of the train MRs whose words it holds."""
        if tokenizer is None:
            raise ValueError("the semantic classifier needs the Diffusion-LM's tokenizer")
        words = [tokenizer._id_to_word[i] for i in range(len(tokenizer))]
        clf = cls(space, encoder, words, [])
        pairs = {f"{f} : {v}" for row in oracle_rows for f, v in row["pairs"]}
        clf.pairs = sorted(p for p in pairs if clf._value_ids(p.partition(" : ")[2]) is not None)
        return clf

    # ---- labels: the sentence's own words ---------------------------------------------------
    @staticmethod
    def oracle(sentences: list[list[str]], mrs: list[str]) -> list[dict]:
        return [{"pairs": mr_pairs(mr), "words": words} for words, mr in zip(sentences, mrs)]

    def encode_labels(self, oracle_rows: list) -> torch.Tensor:
        """(n, L) word ids of [START] w_1 … w_n [END], −1 on the padding."""
        L = self.space.max_len
        out = torch.full((len(oracle_rows), L), -1, dtype=torch.long)
        unk = self._id.get("[UNK]", 0)
        for r, row in enumerate(oracle_rows):
            ids = [self._id["[START]"]] + [self._id.get(w, unk) for w in row["words"]] + [self._id["[END]"]]
            out[r, :len(ids)] = torch.tensor(ids[:L])
        return out

    # ---- the control interface ------------------------------------------------------------
    def _value_ids(self, value: str) -> list[list[int]] | None:
        """For each word of the value, the vocabulary ids that match it ignoring case (None if one is unknown)."""
        ids = [self._by_lower.get(w) for w in value_words(value)]
        return None if not ids or any(i is None for i in ids) else ids

    def target(self, target: str | tuple[str, str]) -> torch.Tensor:
        """(k, V) bool: the ids allowed at each of the value's k words; `target` is "field : value" or the pair."""
        field, value = parse_semantic_target(target) if isinstance(target, str) else target
        if field in SKIP_FIELDS:
            raise UserError(f"field {field!r} cannot be controlled: its values never appear as words")
        if f"{field} : {value}" not in self.pairs:
            known = sorted(p.partition(" : ")[2] for p in self.pairs if p.startswith(f"{field} : "))
            raise UserError(f"unknown value {value!r} for field {field!r} (known: {', '.join(known)})")
        ids = self._value_ids(value)
        mask = torch.zeros(len(ids), len(self.words), dtype=torch.bool)
        for j, allowed in enumerate(ids):
            mask[j, allowed] = True
        return mask

    @staticmethod
    def stack_targets(masks: list[torch.Tensor]) -> torch.Tensor:
        """(B, K, V) with K the longest value; rows past a value's length are all False."""
        k = max(m.shape[0] for m in masks)
        out = torch.zeros(len(masks), k, masks[0].shape[1], dtype=torch.bool)
        for b, m in enumerate(masks):
            out[b, :m.shape[0]] = m
        return out

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = self.head(self.encoder(x_t, t)).softmax(-1)  # (B, L, V)
        match = torch.bmm(p, target.transpose(1, 2).to(p.dtype)).clamp(1e-12, 1.0).log()  # (B, L, K)
        B, L, K = match.shape
        used = target.any(-1)  # (B, K): which of the K rows are real words
        # past the end, a real word is impossible (log p = −30) and a padding row is free (log 1 = 0)
        past = (used[:, None, :].to(p.dtype) * -30.0).expand(B, K - 1, K)
        match = torch.cat([match, past], dim=1)
        run = torch.zeros(B, L, device=x_t.device, dtype=p.dtype)
        for j in range(K):  # log Π_j p(word j at s + j), for every start s
            run = run + match[:, j:j + L, j] * used[:, j:j + 1]
        miss = torch.log1p(-run.exp().clamp(max=1 - 1e-6)).sum(-1)  # log Π_s (1 − p_s)
        return torch.log((-torch.expm1(miss)).clamp_min(1e-12))  # log(1 − Π_s (1 − p_s))

    @torch.no_grad()
    def satisfied(self, x0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) bool: do the words x0 (clamped, t = 0) state the value, p(stated) > 1/2? (Early exit's check,
        `sample.exit_met`: stated or not is what the metric asks, so a finished sentence can be checked.)"""
        t = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        return self.log_prob(x0, t, target) > math.log(0.5)

    # ---- training ---------------------------------------------------------------------------
    collate = staticmethod(collate_rows)
    loss_total = staticmethod(position_total)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, total=None) -> torch.Tensor:
        return position_loss(self.head(self.encoder(x_t, t)), labels, total)

    @torch.no_grad()
    def accuracy(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> float:
        """Word accuracy of the predictor over [START] w_1 … w_n [END]."""
        return position_accuracy(self.head(self.encoder(x_t, t)), labels)
