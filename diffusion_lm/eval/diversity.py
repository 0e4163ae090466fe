"""Diversity of a set of sentences: distinct-n (Li et al. 2016) and self-BLEU (Zhu et al. 2018, Texygen).

A model can buy fluency by repeating its safest sentence; these two numbers catch that. Compare a
system's figures with the references' on the same number of sentences: distinct-n falls and self-BLEU
rises as a set grows, so only same-size sets compare.

- distinct-n: distinct n-grams over all n-grams of the set, in % (↑ more diverse).
- self-BLEU: mean BLEU-4 of each sentence against all the others as references, in % (↓ more diverse);
  nltk's sentence BLEU with its method-1 smoothing, as Texygen computes it.
"""
from __future__ import annotations

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    grams = [g for t in texts for g in _ngrams(t.split(), n)]
    if not grams:
        raise ValueError(f"distinct-{n}: no sentence has {n} words")
    return 100.0 * len(set(grams)) / len(grams)


def self_bleu(texts: list[str]) -> float:
    if len(texts) < 2:
        raise ValueError("self-BLEU needs at least two sentences")
    words = [t.split() for t in texts]
    smooth = SmoothingFunction().method1
    total = sum(sentence_bleu(words[:i] + words[i + 1:], hyp, smoothing_function=smooth)
                for i, hyp in enumerate(words))
    return 100.0 * total / len(words)


def diversity(texts: list[str]) -> dict:
    """{"distinct1", "distinct2", "self_bleu"} of a set of sentences (at least two)."""
    return {"distinct1": distinct_n(texts, 1), "distinct2": distinct_n(texts, 2), "self_bleu": self_bleu(texts)}
