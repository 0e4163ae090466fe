"""Syntax control: a t-conditioned span parser over noisy latents with a tree CRF.

Every span (i, j) of word positions gets a score for each label — a
constituent label, a unary chain such as "S+VP" (outermost first), or ∅ for
a span that is not a constituent. A binary tree's score is the sum over its
spans; torch-struct's `TreeCRF` sums over all trees (log Z).

Both controls are one computation, log Z over the trees a constraint allows
minus log Z over all trees:

* tree: the target's constituents with their labels, spans crossing none of
  them labelled ∅ (they are the binarisation, summed over), crossing spans
  forbidden;
* span (i, j, LABEL): spans crossing (i, j) forbidden, (i, j) restricted to
  labels whose chain contains LABEL — log p(the span is in the tree).

A span compatible with every bracket of a full binary tree is in it, so
forbidding the crossing spans is what forces the wanted ones in.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from nltk import Tree
from torch import nn

from diffusion_lm.distributed import global_mean
from diffusion_lm.errors import UserError
from diffusion_lm.eval.oracles import parse_sentences
from diffusion_lm.tasks import parse_span_target
from diffusion_lm.tasks.trees import base_label, parse_bracketed

from .encoder import EncoderConfig, LatentEncoder, LatentSpace

EMPTY = "∅"
EXEMPLARS = 4000  # training trees kept with the classifier for span targets
FORBID = -1e4  # not −inf: log Z over an all-forbidden span stays finite and its gradient zero


def constituents(tree: Tree) -> tuple[int, dict[tuple[int, int], str]]:
    """Word count and {(i, j): label chain} over word positions (j inclusive); no preterminals, no TOP."""
    spans: dict[tuple[int, int], list[str]] = {}

    def walk(t, start: int) -> int:
        if isinstance(t, str) or (len(t) == 1 and isinstance(t[0], str)):
            return start + 1
        end = start
        for kid in t:
            end = walk(kid, end)
        label = base_label(t.label())
        if label not in ("TOP", "ROOT", "") and end > start:
            spans.setdefault((start, end - 1), []).insert(0, label)  # parents come after children
        return end

    n = walk(tree, 0)
    return n, {k: "+".join(v) for k, v in spans.items()}


def crossing(n: int, size: int, spans) -> np.ndarray:
    """(size, size) bool: spans (i, j) inside n words that cross any of `spans`."""
    if not spans:
        return np.zeros((size, size), dtype=bool)
    a, b = (np.array(v)[:, None, None] for v in zip(*spans))
    i, j = np.arange(size)[None, :, None], np.arange(size)[None, None, :]
    cross = ((i < a) & (a <= j) & (j < b)) | ((a < i) & (i <= b) & (b < j))
    return cross.any(0)


def span_tails(oracle_rows: list[str], size: int) -> dict[str, list[int]]:
    """For each constituent label, how many words follow a span with that label (counts of 0..size−1)."""
    tails: dict[str, list[int]] = {}
    for row in oracle_rows:
        n, spans = constituents(parse_bracketed(row))
        for (i, j), chain in spans.items():
            for label in set(chain.split("+")):
                tails.setdefault(label, [0] * size)[min(n - 1 - j, size - 1)] += 1
    return tails


@dataclass
class TreeTarget:
    """A batch of constraints for `TreeClassifier.log_prob`."""

    allowed: torch.Tensor  # (B, N, N, NT) bool
    lengths: torch.Tensor  # (B,) words

    @staticmethod
    def stack(rows: list["TreeTarget"], device=None) -> "TreeTarget":
        return TreeTarget(torch.cat([r.allowed for r in rows]).to(device), torch.cat([r.lengths for r in rows]).to(device))


class TreeClassifier(nn.Module):
    kind = "tree"

    def __init__(self, space: LatentSpace, encoder: EncoderConfig, labels: list[str], span_hidden: int = 128,
                 lengths: list[int] | None = None, tails: dict[str, list[int]] | None = None,
                 exemplars: list[str] | None = None):
        super().__init__()
        if not labels or labels[0] != EMPTY:
            raise ValueError(f"labels must start with {EMPTY!r}")
        self.space, self.labels = space, list(labels)
        self.lengths = list(lengths or [])  # word counts of the training sentences
        self.tails = dict(tails or {})  # label → counts of the words after such a span (sentence lengths for spans)
        self.exemplars = list(exemplars or [])  # training trees (bracketed) that span targets borrow a shape from
        self._exemplar_spans = None
        self.span_hidden = span_hidden
        self.encoder = LatentEncoder(space, encoder)
        self.left = nn.Linear(encoder.hidden, span_hidden)
        self.right = nn.Linear(encoder.hidden, span_hidden, bias=False)
        self.out = nn.Sequential(nn.LayerNorm(span_hidden), nn.Linear(span_hidden, len(self.labels)))
        self._index = {lab: k for k, lab in enumerate(self.labels)}

    @property
    def size(self) -> int:
        return self.space.max_len - 2  # word positions 1..L−2 (START before, END after)

    def extra_config(self) -> dict:
        return {"labels": self.labels, "span_hidden": self.span_hidden, "lengths": self.lengths, "tails": self.tails,
                "exemplars": self.exemplars}

    @classmethod
    def for_data(cls, space: LatentSpace, encoder: EncoderConfig, oracle_rows: list, min_count: int = 10,
                 tokenizer=None) -> "TreeClassifier":
        counts = Counter(lab for row in oracle_rows for lab in constituents(parse_bracketed(row))[1].values())
        labels = [EMPTY] + sorted(lab for lab, c in counts.items() if c >= min_count)
        lengths = [len(parse_bracketed(row).leaves()) for row in oracle_rows]
        # span features as wide as the encoder's (128 for the default encoder, as before; a smaller tagger
        # for fast decoding shrinks its n^2 span MLP with it)
        return cls(space, encoder, labels, span_hidden=encoder.hidden, lengths=lengths,
                   tails=span_tails(oracle_rows, space.max_len - 2), exemplars=oracle_rows[:EXEMPLARS])

    # ---- labels and targets -----------------------------------------------------------------
    def label_id(self, chain: str, strict: bool = True) -> int | None:
        """A chain's id; a rare chain falls back to its outermost label."""
        for candidate in (chain, chain.split("+")[0]):
            if candidate in self._index:
                return self._index[candidate]
        if strict:
            raise UserError(f"unknown constituent label {chain!r} for this tree classifier "
                            f"(known: {', '.join(self.labels[1:])})")
        return None

    def _check_length(self, n: int) -> None:
        if not 1 <= n <= self.size:
            raise UserError(f"a syntax target of {n} words does not fit this model (1..{self.size} words)")

    def gold(self, tree: Tree | str, strict: bool = True) -> tuple[int, dict[tuple[int, int], int]]:
        """Word count and {(i, j): label id} of a tree (rare chains mapped, unknown ones dropped unless strict)."""
        tree = parse_bracketed(tree) if isinstance(tree, str) else tree
        n, spans = constituents(tree)
        self._check_length(n)
        gold = {k: self.label_id(v, strict) for k, v in spans.items()}
        return n, {k: v for k, v in gold.items() if v is not None}

    def tree_target(self, tree: Tree | str) -> TreeTarget:
        return self.gold_target(*self.gold(tree))

    def shape_target(self, tree: Tree | str) -> TreeTarget:
        """`tree_target` for a borrowed training tree: a bracket whose label this classifier never learned
        (too rare in its training parses) is left free, any label or none, instead of refusing the tree."""
        tree = parse_bracketed(tree) if isinstance(tree, str) else tree
        n, known = self.gold(tree, strict=False)
        target = self.gold_target(n, known)
        for i, j in constituents(tree)[1].keys() - known.keys():
            target.allowed[0, i, j] = True
        return target

    def gold_target(self, n: int, gold: dict[tuple[int, int], int]) -> TreeTarget:
        N, NT = self.size, len(self.labels)
        allowed = np.ones((N, N, NT), dtype=bool)
        allowed[:n, :n] = False
        free = ~crossing(n, N, list(gold)) & np.triu(np.ones((N, N), dtype=bool))
        allowed[:n, :n, 0] = free[:n, :n]
        for (i, j), k in gold.items():
            allowed[i, j] = False
            allowed[i, j, k] = True
        return TreeTarget(torch.from_numpy(allowed)[None], torch.tensor([n]))

    def span_target(self, target, n: int) -> TreeTarget:
        i, j, label = parse_span_target(target, n)
        self._check_length(n)
        ids = [k for k, chain in enumerate(self.labels) if label in chain.split("+")]
        if not ids:
            raise UserError(f"unknown constituent label {label!r} for this tree classifier "
                            f"(known: {', '.join(sorted({p for c in self.labels[1:] for p in c.split('+')}))})")
        N, NT = self.size, len(self.labels)
        allowed = np.ones((N, N, NT), dtype=bool)
        allowed[crossing(n, N, [(i, j)])] = False
        allowed[i, j] = False
        allowed[i, j, ids] = True
        return TreeTarget(torch.from_numpy(allowed)[None], torch.tensor([n]))

    def span_length(self, target, generator: torch.Generator) -> int:
        """A sentence length for a span target: j + 1 + a number of words that follow such a span in training.

        A span's label says where it tends to sit (a VP often ends just before
        the final period), so the sentence ends where such spans usually end.
        """
        _, j, label = parse_span_target(target)
        if j >= self.size:
            raise UserError(f"span target {target} ends past the longest sentence this model writes "
                            f"({self.size} words)")
        counts = torch.tensor(self.tails.get(label, [1]), dtype=torch.float)[: self.size - j]
        if counts.sum() == 0:
            counts = torch.ones(1)
        return j + 1 + int(torch.multinomial(counts, 1, generator=generator))

    def exemplar(self, target, generator: torch.Generator) -> Tree | None:
        """A training tree that has the target span (same words i..j, a chain holding the label), or None.

        Span control then steers toward that tree (its brackets and tags), a
        whole sentence shape known to hold the span, instead of asking for the
        span alone in a sentence of a guessed length.
        """
        i, j, label = parse_span_target(target)
        if self._exemplar_spans is None:
            self._exemplar_spans = [constituents(parse_bracketed(e)) for e in self.exemplars]
        hits = [k for k, (n, spans) in enumerate(self._exemplar_spans)
                if n <= self.size and label in spans.get((i, j), "").split("+")]
        if not hits:
            return None
        return parse_bracketed(self.exemplars[hits[int(torch.randint(len(hits), (1,), generator=generator))]])

    # ---- scores ---------------------------------------------------------------------------
    def potentials(self, x_t: torch.Tensor, t: torch.Tensor, words: int | None = None) -> torch.Tensor:
        """(B, N, N, NT) label scores of every span [i, j], i <= j, of word positions (the first `words` positions
        only, if given); entries with j < i are 0."""
        n = self.size if words is None else words
        h = self.encoder(x_t, t)[:, 1:1 + n]
        # Only spans i <= j exist, and the inside pass reads nothing else: the span MLP runs on those
        # n(n+1)/2 pairs, half the n^2 grid, and the lower triangle stays 0.
        i, j = torch.triu_indices(n, n, device=h.device)
        z = self.out(F.gelu(self.left(h)[:, i] + self.right(h)[:, j]))
        pot = z.new_zeros(h.shape[0], n, n, z.shape[-1])
        pot[:, i, j] = z
        return pot

    @staticmethod
    def _log_partition(potentials: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """log Z: the log-sum over every binary tree of each sentence's first `lengths` words, and over every
        labelling of its spans, of the sum of the span scores (the inside pass of a labelled CKY CRF, as
        torch_struct's TreeCRF; the tests check the two agree). Labels first: a tree's labellings factor over its
        spans, so s(i, j) = logsumexp over labels, and then β(i, j) = s(i, j) + logsumexp_k β(i, k) + β(k+1, j).
        One vectorised step per span width, which at these sizes is cheaper than TreeCRF's many small ops."""
        s = potentials.logsumexp(-1)  # (B, N, N)
        B, N, _ = s.shape
        first = torch.diagonal(s, 0, 1, 2)[..., None]
        by_start, by_end = first, first  # [:, i, w] = β(i, i + w) and [:, j, w] = β(j − w, j); 0 where off the grid
        for w in range(1, N):
            split = by_start[:, :N - w, :w] + by_end[:, w:, :w].flip(-1)  # β(i, i+k) + β(i+k+1, i+w), k < w
            beta = torch.diagonal(s, w, 1, 2) + split.logsumexp(-1)  # (B, N − w)
            by_start = torch.cat([by_start, F.pad(beta, (0, w))[..., None]], -1)
            by_end = torch.cat([by_end, F.pad(beta, (w, 0))[..., None]], -1)
        return by_start[torch.arange(B, device=s.device), 0, lengths.long() - 1]

    def log_prob(self, x_t: torch.Tensor, t: torch.Tensor, target: TreeTarget) -> torch.Tensor:
        # Spans past a sentence's length are outside every tree, so the inside pass runs over the batch's longest
        # sentence only (the same log Z as over all N positions, at (n/N)^3 of the work), and the constrained and
        # free partitions go through one batched pass.
        n = int(target.lengths.max())
        pot = self.potentials(x_t, t, n)
        constrained = pot.masked_fill(~target.allowed[:, :n, :n], FORBID)
        log_z = self._log_partition(torch.cat([constrained, pot]), target.lengths.repeat(2))
        return log_z[:len(pot)] - log_z[len(pot):]

    # ---- training ---------------------------------------------------------------------------
    @staticmethod
    def oracle(sentences: list[list[str]], mrs: list[str]) -> list[str]:
        """The parser oracle's trees, as strings (cached by the trainer)."""
        return parse_sentences(sentences, mrs)

    def encode_labels(self, oracle_rows: list) -> list:
        return [self.gold(row, strict=False) for row in oracle_rows]

    def collate(self, labels: list, rows, device=None) -> TreeTarget:
        return TreeTarget.stack([self.gold_target(*labels[r]) for r in rows], device)

    def loss(self, x_t: torch.Tensor, t: torch.Tensor, labels: TreeTarget, total=None) -> torch.Tensor:
        """Mean over sentences of −log p(gold tree) per word; with `total` (under torchrun), this rank's share
        of the mean over the global batch's `total` sentences."""
        per_word = self.log_prob(x_t, t, labels) / labels.lengths
        return -per_word.mean() if total is None else global_mean(-per_word.sum(), total)

    @staticmethod
    def loss_total(labels: list, rows) -> int:
        return len(rows)

    @torch.no_grad()
    def accuracy(self, x_t: torch.Tensor, t: torch.Tensor, labels: TreeTarget) -> float:
        """Mean per-word log p(gold tree) — higher is better (0 is certainty)."""
        return (self.log_prob(x_t, t, labels) / labels.lengths).mean().item()
