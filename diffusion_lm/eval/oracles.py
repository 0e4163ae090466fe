"""Frozen judges: NLTK's perceptron POS tagger and the constituency parser.

They score every system's generations and derive the control targets; they are
never the models under test. Everything loads from the package, offline.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from nltk import Tree

from ..assets import assets_dir, use_shipped_nltk_data
from ..errors import UserError
from ..tasks.tagsets import UNIVERSAL_TAGS, read_tagger_part, tagger_dir, to_universal
from ..tasks.trees import tree_to_string
from .parser import SHIPPED_PARSER, load_parser, parse_words


class PosTagger:
    """NLTK's English averaged-perceptron tagger (Penn Treebank tags), read from the shipped .json.xz files."""

    def __init__(self, folder: str | Path | None = None):
        from nltk.tag.perceptron import PerceptronTagger

        folder = Path(folder or tagger_dir())
        use_shipped_nltk_data()

        def read(part: str):
            return read_tagger_part(folder, part)

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
        return to_universal(tags)

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
        if name_or_path == "shipped":
            name_or_path = str(assets_dir() / "models" / SHIPPED_PARSER)
        self.source = name_or_path
        self._parser = load_parser(name_or_path)

    def parse(self, sentences: list[list[str]]) -> list[Tree]:
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


# ---- oracle labels of whole corpora (what classifiers and baselines train on) ---------------------

def tag_sentences(sentences: list[list[str]], mrs: list[str] | None = None) -> list[list[str]]:
    """The tagger's PTB tags of each tokenised sentence."""
    return [pos_tagger().tag(words) for words in sentences]


def parse_sentences(sentences: list[list[str]], mrs: list[str] | None = None) -> list[str]:
    """The shipped parser's tree of each tokenised sentence, as bracketed strings."""
    return [tree_to_string(t) for t in constituency_parser("shipped").parse(sentences)]
