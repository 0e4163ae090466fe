"""Semantic-content control: does the sentence state a field's value?

The paper used a left-to-right classifier. Here the question the metric asks
("do the value's words appear anywhere?") is asked directly: each position
scores every known value, and a value's logit is a log-sum-exp over
positions — a soft "somewhere in the sentence". The gradient then pulls the
one or two positions most ready to hold the value toward its words, instead
of nudging the whole sentence.

Classes are the distinct value strings of E2E train (both `name : The Eagle`
and `near : The Eagle` ask for the words "The Eagle"); labels are whether the
value's words appear in the sentence, the success criterion itself.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lm.errors import UserError
from diffusion_lm.eval.metrics import MR_PATTERN, parse_semantic_target
from diffusion_lm.text.data import tokenize_e2e

from .encoder import EncoderConfig, LatentEncoder, LatentSpace

SKIP_FIELDS = ("familyFriendly",)  # yes/no: the value's words never appear as such


def mr_pairs(mr: str) -> list[tuple[str, str]]:
    return [(f.strip(), v.strip()) for f, v in MR_PATTERN.findall(mr) if f.strip() not in SKIP_FIELDS]


def value_words(value: str) -> list[str]:
    return tokenize_e2e(value).lower().split()


def contains(words_lower: list[str], want: list[str]) -> bool:
    n = len(want)
    return any(words_lower[k:k + n] == want for k in range(len(words_lower) - n + 1))


class SemanticClassifier(nn.Module):
    kind = "semantic"

    def __init__(self, space: LatentSpace, encoder: EncoderConfig, values: list[str], pairs: list[str]):
        super().__init__()
        self.space, self.values, self.pairs = space, list(values), sorted(pairs)
        self.encoder = LatentEncoder(space, encoder)
        self.head = nn.Linear(encoder.hidden, len(self.values))

    def extra_config(self) -> dict:
        return {"values": self.values, "pairs": self.pairs}

    @classmethod
    def for_data(cls, space: LatentSpace, encoder: EncoderConfig, oracle_rows: list,
                 min_count: int = 10) -> "SemanticClassifier":
        """Values stated verbatim in at least `min_count` train sentences, and their (field, value) pairs."""
        counts: Counter = Counter()
        pairs = set()
        for row in oracle_rows:
            for field, value in row["pairs"]:
                if value in row["present"]:
                    counts[value] += 1
                pairs.add(f"{field} : {value}")
        values = sorted(v for v, c in counts.items() if c >= min_count)
        if not values:
            raise UserError(f"no value is stated in {min_count} or more training sentences; "
                            "train on more sentences or lower optim.min_count")
        return cls(space, encoder, values, [p for p in pairs if p.partition(" : ")[2] in set(values)])

    # ---- oracle labels --------------------------------------------------------------------
    @staticmethod
    def oracle(sentences: list[list[str]], mrs: list[str]) -> list[dict]:
        rows = []
        for words, mr in zip(sentences, mrs):
            lower = [w.lower() for w in words]
            pairs = mr_pairs(mr)
            rows.append({"pairs": pairs, "present": [v for _, v in pairs if contains(lower, value_words(v))],
                         "words": lower})
        return rows

    def encode_labels(self, oracle_rows: list) -> torch.Tensor:
        """(n, K) 1.0 where a value's words appear in the sentence (any value, not only the MR's)."""
        wanted = [value_words(v) for v in self.values]
        out = torch.zeros(len(oracle_rows), len(self.values))
        for i, row in enumerate(oracle_rows):
            for k, want in enumerate(wanted):
                out[i, k] = float(contains(row["words"], want))
        return out

    # ---- the control interface ------------------------------------------------------------
    def target(self, target: str) -> int:
        field, value = parse_semantic_target(target)
        if field in SKIP_FIELDS:
            raise UserError(f"field {field!r} cannot be controlled: its values never appear as words")
        if f"{field} : {value}" not in self.pairs:
            known = sorted(p.partition(" : ")[2] for p in self.pairs if p.startswith(f"{field} : "))
            raise UserError(f"unknown value {value!r} for field {field!r} (known: {', '.join(known)})")
        return self.values.index(value)

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scores = self.head(self.encoder(x_t, t))  # (B, L, K)
        return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(self.logits(x_t, t).gather(-1, target[:, None])[:, 0])

    # ---- training ---------------------------------------------------------------------------
    @staticmethod
    def collate(labels: torch.Tensor, rows, device=None) -> torch.Tensor:
        return labels[rows].to(device)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(x_t, t), labels)

    @torch.no_grad()
    def accuracy(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> float:
        """Of the values a sentence states, the share the classifier calls present."""
        pred = self.logits(x_t, t) > 0
        keep = labels > 0
        return 100.0 * pred[keep].float().mean().item()
