"""Fluency of a set of sentences under the teacher LM, summarised against E2E references.

Besides the median and mean per-sentence perplexity, `fluent_share` is the share of sentences that
read at least as well as 90% of the references: perplexity no higher than the references' 90th
percentile. It answers "how many of these would pass for human E2E text?" where a median cannot.
"""
from __future__ import annotations

import statistics

import torch

from ..data import load_e2e


def reference_sentences(n: int) -> list[str]:
    """n E2E valid references spread evenly over the split (the same ones every time)."""
    refs = load_e2e("valid")["text"]
    return refs[:: max(1, len(refs) // n)][:n]


def threshold(ref_ppl: list[float], q: float = 0.9) -> float:
    return float(torch.quantile(torch.tensor(ref_ppl, dtype=torch.float64), q))


def summarise(ppl: list[float], ref_ppl: list[float]) -> dict:
    if not ppl:
        raise ValueError("no perplexities to summarise")
    limit = threshold(ref_ppl)
    return {"median_ppl": round(statistics.median(ppl), 2), "mean_ppl": round(statistics.mean(ppl), 2),
            "fluent_share": round(sum(p <= limit for p in ppl) / len(ppl), 3)}
