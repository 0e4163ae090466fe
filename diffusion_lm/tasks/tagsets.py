"""The part-of-speech tag sets a target may use: Penn Treebank and NLTK's universal tags.

The PTB set is the oracle tagger's own classes, read from the shipped tagger
files without loading its weights, so checking a target is cheap.
"""
from __future__ import annotations

import json
import lzma
from functools import lru_cache
from pathlib import Path

from nltk.tag.mapping import map_tag

from ..assets import assets_dir, use_shipped_nltk_data
from ..errors import UserError

UNIVERSAL_TAGS = frozenset({"ADJ", "ADP", "ADV", "CONJ", "DET", "NOUN", "NUM", "PRT", "PRON", "VERB", ".", "X"})
TAGGER = "averaged_perceptron_tagger_eng"


def tagger_dir() -> Path:
    return assets_dir() / "nltk_data" / "taggers" / TAGGER


def read_tagger_part(folder: str | Path, part: str):
    """One of the tagger's .json.xz files (weights, tagdict, classes)."""
    f = Path(folder) / f"{TAGGER}.{part}.json.xz"
    if not f.is_file():
        raise UserError(f"POS tagger file missing: {f}")
    with lzma.open(f, "rt", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def ptb_tags() -> frozenset[str]:
    """The Penn Treebank tags the shipped tagger writes."""
    return frozenset(read_tagger_part(tagger_dir(), "classes"))


def to_universal(tags: list[str]) -> list[str]:
    """PTB tags in NLTK's universal tagset."""
    use_shipped_nltk_data()
    return [map_tag("en-ptb", "universal", t) for t in tags]
