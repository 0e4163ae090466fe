"""Frozen judges: NLTK's perceptron POS tagger and the constituency parser.

They score every system's generations and derive the control targets; they are
never the models under test. Everything loads from the package, offline.
"""
from __future__ import annotations

import json
import lzma
from functools import lru_cache
from importlib import resources
from pathlib import Path

from nltk import Tree

from ..errors import UserError

UNIVERSAL_TAGS = frozenset({"ADJ", "ADP", "ADV", "CONJ", "DET", "NOUN", "NUM", "PRT", "PRON", "VERB", ".", "X"})


def assets_dir() -> Path:
    return Path(str(resources.files("diffusion_lm") / "assets"))


def use_shipped_nltk_data() -> str:
    """Put the shipped nltk_data (treebank sample, universal-tagset map) on nltk's search path."""
    import nltk

    path = str(assets_dir() / "nltk_data")
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)
    return path


class PosTagger:
    """NLTK's English averaged-perceptron tagger (Penn Treebank tags), read from the shipped .json.xz files."""

    def __init__(self, folder: str | Path | None = None):
        from nltk.tag.perceptron import PerceptronTagger

        folder = Path(folder or assets_dir() / "nltk_data" / "taggers" / "averaged_perceptron_tagger_eng")
        use_shipped_nltk_data()

        def read(part: str):
            f = folder / f"averaged_perceptron_tagger_eng.{part}.json.xz"
            if not f.is_file():
                raise UserError(f"POS tagger file missing: {f}")
            with lzma.open(f, "rt", encoding="utf-8") as fh:
                return json.load(fh)

        self._tagger = PerceptronTagger(load=False)
        self._tagger.model.weights = read("weights")
        self._tagger.tagdict = read("tagdict")
        self._tagger.classes = set(read("classes"))
        self._tagger.model.classes = self._tagger.classes
        self.ptb_tags = frozenset(self._tagger.classes)

    def tag(self, words: list[str]) -> list[str]:
        """Penn Treebank tags of a tokenised sentence."""
        if not words:
            return []
        return [t for _, t in self._tagger.tag(list(words))]

    def to_universal(self, tags: list[str]) -> list[str]:
        from nltk.tag.mapping import map_tag

        return [map_tag("en-ptb", "universal", t) for t in tags]

    def check_tags(self, tags: list[str], tagset: str) -> None:
        known = self.ptb_tags if tagset == "ptb" else UNIVERSAL_TAGS
        bad = [t for t in tags if t not in known]
        if bad:
            raise UserError(f"unknown {tagset} POS tag {bad[0]!r} (known: {' '.join(sorted(known))})")


@lru_cache(maxsize=1)
def pos_tagger() -> PosTagger:
    return PosTagger()


class ConstituencyParser:
    """Parses tokenised sentences into nltk Trees with the trained benepar ChartParser."""

    def __init__(self, name_or_path: str = "shipped"):
        from .parser import SHIPPED_PARSER, load_parser

        if name_or_path == "shipped":
            name_or_path = str(assets_dir() / "models" / SHIPPED_PARSER)
        self.source = name_or_path
        self._parser = load_parser(name_or_path)

    def parse(self, sentences: list[list[str]]) -> list[Tree]:
        from .parser import parse_words

        trees: list[Tree] = [None] * len(sentences)  # type: ignore[list-item]
        todo = [i for i, s in enumerate(sentences) if s]
        for i, t in zip(todo, parse_words(self._parser, [sentences[i] for i in todo])):
            trees[i] = t
        for i, s in enumerate(sentences):
            if not s:
                trees[i] = Tree("S", [])
        return trees


@lru_cache(maxsize=2)
def constituency_parser(name_or_path: str = "shipped") -> ConstituencyParser:
    return ConstituencyParser(name_or_path)
