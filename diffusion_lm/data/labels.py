"""Per-sentence labels of a corpus (an oracle's tags or parses, say), computed once and cached.

The cache is a gzipped JSON list, one row per sentence; a cache with another
number of rows is recomputed (and overwritten).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..io import atomic_write

CHUNK = 256  # sentences per call of the labeller


def cached_labels(label: Callable[[list[list[str]], list[str]], list], words: list[list[str]], mrs: list[str],
                  cache: Path, progress: bool = True, desc: str = "labels") -> list:
    """label(words, mrs) over the corpus in chunks, read from `cache` when it holds one row per sentence."""
    if cache.is_file():
        try:
            with gzip.open(cache, "rt", encoding="utf-8") as f:
                rows = json.load(f)
        except (OSError, EOFError, ValueError, RecursionError):  # a damaged cache is rebuilt
            rows = None
        if isinstance(rows, list) and len(rows) == len(words):
            return rows
    rows = []
    with tqdm(range(0, len(words), CHUNK), desc=desc, disable=not progress) as bar:
        for k in bar:
            rows += label(words[k:k + CHUNK], mrs[k:k + CHUNK])

    def write(p):
        with gzip.open(p, "wt", encoding="utf-8") as f:
            json.dump(rows, f)
    atomic_write(cache, write)
    return rows
