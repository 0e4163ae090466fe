"""What the baselines' attribute models learn from: E2E train sentences labelled by the oracles.

Each sentence carries its oracle POS tags, its oracle parse (as labelled
spans over word positions, punctuation included, the spans metric's
convention), its length, and the E2E values it states. A value is *stated*
when its words appear in the sentence ignoring case, the semantic metric's
rule, so "name : The Eagle" and "near : The Eagle" are one label.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.e2e import UNSTATED_FIELDS, e2e_split, mr_pairs, value_words
from ..data.labels import cached_labels
from ..errors import UserError
from ..eval.oracles import parse_sentences, tag_sentences
from ..tasks import parse_semantic_target
from ..tasks.trees import labelled_spans, parse_bracketed

SKIP_FIELDS = UNSTATED_FIELDS


def value_key(value: str) -> str:
    """The lower-cased words a value must show: one label per distinct string."""
    return " ".join(value_words(value))


def states(words: list[str], key: str) -> bool:
    """Does the sentence state the value (its words, in order, ignoring case)?"""
    want, have = key.split(), [w.lower() for w in words]
    n = len(want)
    return any(have[k:k + n] == want for k in range(len(have) - n + 1))


@dataclass
class Labelled:
    """E2E train sentences with their oracle labels (index-aligned lists)."""

    words: list[list[str]]
    tags: list[list[str]]
    spans: list[list[tuple[int, int, str]]]
    pairs: list[list[tuple[str, str]]]

    def __len__(self) -> int:
        return len(self.words)


def label_e2e(split: str, limit: int | None, max_words: int, cache_dir: Path, progress: bool = True,
              oracles: bool = True) -> Labelled:
    """The first `limit` sentences of a split, tagged and parsed by the oracles unless `oracles` is False
    (PPLM needs only the values); the oracles' output is cached in cache_dir."""
    words, mrs = e2e_split(split, limit, max_words)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tags: list[list] = [[] for _ in words]
    spans: list[list] = [[] for _ in words]
    if oracles:
        tags = cached_labels(tag_sentences, words, mrs, cache_dir / f"oracle_pos_{split}.json.gz", progress,
                             desc="pos oracle labels")
        parsed = cached_labels(parse_sentences, words, mrs, cache_dir / f"oracle_tree_{split}.json.gz", progress,
                               desc="tree oracle labels")
        for k, (w, text) in enumerate(zip(words, parsed)):
            tree = parse_bracketed(text)
            if tree.leaves() != w:
                raise UserError(f"{cache_dir}/oracle_tree_{split}.json.gz is stale (row {k} parses other words); "
                                "delete it to relabel")
            spans[k] = sorted(labelled_spans(tree, evalb=False))
    return Labelled(words, tags, spans, [mr_pairs(m) for m in mrs])


def value_vocabulary(data: Labelled, min_count: int) -> tuple[list[str], list[str]]:
    """(pairs, values): every 'field : value' of the MRs seen min_count times, and their distinct value keys."""
    counts = Counter(f"{f} : {v}" for pairs in data.pairs for f, v in pairs if f not in SKIP_FIELDS)
    pairs = sorted(p for p, c in counts.items() if c >= min_count and value_key(p.partition(" : ")[2]))
    return pairs, sorted({value_key(p.partition(" : ")[2]) for p in pairs})


def span_vocabulary(data: Labelled, min_count: int) -> list[str]:
    counts = Counter(label for spans in data.spans for _, _, label in spans)
    return sorted(lab for lab, c in counts.items() if c >= min_count)


def semantic_value(target: str | tuple[str, str], pairs: list[str]) -> str:
    """The value key a `field : value` target (or its parsed pair) asks for, or a one-line error if the
    model never saw it."""
    field, value = parse_semantic_target(target) if isinstance(target, str) else target
    if field in SKIP_FIELDS:
        raise UserError(f"field {field!r} cannot be controlled: its values never appear as words")
    if f"{field} : {value}" not in pairs:
        known = sorted(p.partition(" : ")[2] for p in pairs if p.startswith(f"{field} : "))
        raise UserError(f"unknown value {value!r} for field {field!r} (known: {', '.join(known)})")
    return value_key(value)
