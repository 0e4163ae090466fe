"""Part-of-speech control: a t-conditioned tagger over noisy latents.

log p(tags | x_t) = Σ_i log p(tag_i | x_t, t) over the word positions 1..n
(position 0 holds START). Targets may be Penn Treebank tags or NLTK's
universal tags; a universal tag's probability is the sum of its PTB tags'.
"""
from __future__ import annotations

import torch
from torch import nn

from diffusion_lm.errors import UserError
from diffusion_lm.eval.oracles import tag_sentences
from diffusion_lm.tasks import parse_pos_target
from diffusion_lm.tasks.tagsets import ptb_tags, to_universal

from .encoder import (EncoderConfig, LatentEncoder, LatentSpace, collate_rows, position_accuracy, position_loss,
                      position_total)

EXEMPLARS = 4000  # training tag sequences kept for length targets
UNIVERSAL = ["ADJ", "ADP", "ADV", "CONJ", "DET", "NOUN", "NUM", "PRT", "PRON", "VERB", ".", "X"]


class PosClassifier(nn.Module):
    kind = "pos"

    def __init__(self, space: LatentSpace, encoder: EncoderConfig, tags: list[str],
                 exemplars: list[str] | None = None):
        super().__init__()
        self.space, self.tags = space, list(tags)
        self.exemplars = list(exemplars or [])  # tag sequences of training sentences: shapes for length targets
        self.encoder = LatentEncoder(space, encoder)
        self.head = nn.Linear(encoder.hidden, len(self.tags))
        groups = torch.zeros(len(UNIVERSAL), len(self.tags))
        for k, u in enumerate(to_universal(self.tags)):
            groups[UNIVERSAL.index(u), k] = 1.0
        self.register_buffer("groups", groups, persistent=False)

    def extra_config(self) -> dict:
        return {"tags": self.tags, "exemplars": self.exemplars}

    @classmethod
    def for_data(cls, space: LatentSpace, encoder: EncoderConfig, oracle_rows: list, min_count: int = 0,
                 tokenizer=None) -> "PosClassifier":
        return cls(space, encoder, sorted(ptb_tags()), exemplars=[" ".join(r) for r in oracle_rows[:EXEMPLARS]])

    # ---- oracle labels --------------------------------------------------------------------
    @staticmethod
    def oracle(sentences: list[list[str]], mrs: list[str]) -> list[list[str]]:
        """Training labels: the oracle tagger's tags."""
        return tag_sentences(sentences, mrs)

    def encode_labels(self, oracle_rows: list) -> torch.Tensor:
        """(n, L) tag ids at word positions, −1 elsewhere."""
        return torch.stack([self._row([self.tags.index(t) for t in tags]) for tags in oracle_rows])

    def _row(self, ids: list[int]) -> torch.Tensor:
        row = torch.full((self.space.max_len,), -1, dtype=torch.long)
        row[1:1 + len(ids)] = torch.tensor(ids, dtype=torch.long)
        return row

    # ---- the control interface ------------------------------------------------------------
    def target(self, target) -> tuple[torch.Tensor, int]:
        """A target's per-position class ids (L,) and its length in words."""
        tags, tagset = parse_pos_target(target)
        if len(tags) > self.space.max_len - 2:
            raise UserError(f"POS target has {len(tags)} tags; this model writes at most {self.space.max_len - 2} words")
        ids = ([self.tags.index(t) for t in tags] if tagset == "ptb"
               else [len(self.tags) + UNIVERSAL.index(t) for t in tags])
        return self._row(ids), len(tags)

    def length_row(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The tags of a training sentence of n words (a plausible shape for a length target), or no steering."""
        fits = [e for e in self.exemplars if len(e.split()) == n]
        if not fits:
            return self._row([])
        return self.tree_row(fits[int(torch.randint(len(fits), (1,), generator=generator))].split())

    def tree_row(self, tags: list[str]) -> torch.Tensor:
        """Class ids for a parse's preterminal tags; tags the tagger lacks (a parser's -LRB-, say) are not steered."""
        alias = {"-LRB-": "(", "-RRB-": ")", "-LCB-": "(", "-RCB-": ")"}
        ids = [self.tags.index(alias.get(t, t)) if alias.get(t, t) in self.tags else -1 for t in tags]
        if len(ids) > self.space.max_len - 2:
            raise UserError(f"a tree of {len(ids)} words does not fit this model ({self.space.max_len - 2} words)")
        return self._row(ids)

    def class_log_probs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, L, n_ptb + n_universal): PTB log-probs, then universal ones (sums of their PTB tags)."""
        lp = self.head(self.encoder(x_t, t)).log_softmax(-1)
        universal = torch.logsumexp(lp[..., None, :] + self.groups.clamp_min(1e-30).log(), dim=-1)
        return torch.cat([lp, universal], dim=-1)

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x_t.shape[1] < target.shape[1]:  # a sampler trimmed to the batch's held lengths: no tag past its end
            if (target[:, x_t.shape[1]:] >= 0).any():
                raise ValueError(f"POS target has tags past the sampled length {x_t.shape[1]}")
            target = target[:, :x_t.shape[1]]
        lp = self.class_log_probs(x_t, t).gather(-1, target.clamp_min(0)[..., None])[..., 0]
        return (lp * (target >= 0)).sum(-1)

    # ---- training ---------------------------------------------------------------------------
    collate = staticmethod(collate_rows)
    loss_total = staticmethod(position_total)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, total=None) -> torch.Tensor:
        return position_loss(self.head(self.encoder(x_t, t)), labels, total)

    @torch.no_grad()
    def accuracy(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> float:
        return position_accuracy(self.head(self.encoder(x_t, t)), labels)
