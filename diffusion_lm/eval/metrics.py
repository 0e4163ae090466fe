"""Control success for the paper's five tasks, as `evaluate` metric modules.

Every metric takes `predictions` (generated sentences, tokenised with spaces as
E2E is) and `references` (the targets in their text form) and returns
`{"success": mean in percent, "scores": per-sentence scores in percent}`. They
need no hub: instantiate the class, e.g. `PosMatch().compute(...)`, and combine
them with `evaluate.combine` like any other module.

| task | target text | success |
| --- | --- | --- |
| pos | `"DT NNP VBZ DT JJ NN ."` (PTB or universal tags) | share of positions where the oracle's tag of the generation equals the target's, over max(len) |
| tree | bracketed tree | labelled bracket F1 of the oracle parse against the target tree (EVALB conventions) |
| spans | `"[3, 5, \\"PP\\"]"` (inclusive word indices) | 100 if the oracle parse has that span with that label, else 0 |
| semantic | `"food : Italian"` | 100 if the value's words appear in the generation (case-insensitive), else 0 |
| length | `"12"` | 100 if the generation has target ± 2 tokens, else 0 |
| compose | `{"pos": "...", "semantic": "food : Italian"}` | the POS score if the value appears, else 0 (both must hold) |
"""
from __future__ import annotations

import datasets
import evaluate

from ..data.e2e import value_words
from ..errors import UserError
from ..tasks import TARGET_TASKS, get_task
from ..tasks import TASKS as REGISTRY
from ..tasks import (parse_compose_target, parse_length_target, parse_pos_target, parse_semantic_target,
                     parse_span_target)
from ..tasks.trees import labelled_spans, parse_bracketed
from .oracles import constituency_parser, pos_tagger
from .trees import bracket_f1

LENGTH_TOLERANCE = 2


def words_of(text: str, where: str = "generation") -> list[str]:
    words = text.split()
    if not words:
        raise UserError(f"empty {where}: nothing to score")
    return words


# --- per-sentence scores ------------------------------------------------------------------------

def pos_score(text: str, target) -> float:
    tags, tagset = parse_pos_target(target)
    got = pos_tagger().tag(words_of(text))
    if tagset == "universal":
        got = pos_tagger().to_universal(got)
    hits = sum(a == b for a, b in zip(got, tags))
    return 100.0 * hits / max(len(got), len(tags))


def semantic_score(text: str, target: str) -> float:
    _, value = parse_semantic_target(target)
    want = value_words(value)
    have = words_of(text)
    have = [w.lower() for w in have]
    n = len(want)
    return 100.0 * any(have[k:k + n] == want for k in range(len(have) - n + 1))


def length_score(text: str, target) -> float:
    return 100.0 * (abs(len(words_of(text)) - parse_length_target(target)) <= LENGTH_TOLERANCE)


def compose_score(text: str, target) -> float:
    parts = parse_compose_target(target)
    return pos_score(text, parts["pos"]) if semantic_score(text, parts["semantic"]) else 0.0


def validate_target(task: str, target: str, n_words: int | None = None) -> None:
    """A one-line UserError if a target (text form) is malformed; n_words bounds spans and lengths."""
    get_task(task, TASKS).validate(target, n_words)


def _parse(texts: list[str], parser):
    """Oracle parses; `parser` is a name/folder for the oracle, or any object with .parse(list of word lists)."""
    oracle = constituency_parser(parser) if isinstance(parser, str) else parser
    return oracle.parse([words_of(t) for t in texts])


def tree_scores(texts: list[str], targets: list[str], parser="shipped") -> list[float]:
    gold = [parse_bracketed(t) for t in targets]
    return [100.0 * bracket_f1(g, p) for g, p in zip(gold, _parse(texts, parser))]


def span_scores(texts: list[str], targets: list, parser="shipped") -> list[float]:
    spans = [parse_span_target(t) for t in targets]
    return [span_hit(tree, span) for span, tree in zip(spans, _parse(texts, parser))]


def span_hit(tree, span: tuple[int, int, str]) -> float:
    """100 if the tree has a constituent over words i..j (punctuation counted) with that label."""
    return 100.0 * (tuple(span) in labelled_spans(tree, evalb=False))


# --- evaluate modules ---------------------------------------------------------------------------

_FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


class _Success(evaluate.Metric):
    """Base: per-sentence scores in percent and their mean."""

    description = ""

    def __init__(self, parser="shipped", **kwargs):
        kwargs.setdefault("keep_in_memory", True)
        super().__init__(**kwargs)
        self.parser = parser

    def _info(self):
        return evaluate.MetricInfo(description=self.description, citation=_CITATION, features=_FEATURES,
                                   inputs_description=__doc__)

    def _scores(self, predictions: list[str], references: list[str]) -> list[float]:
        raise NotImplementedError

    def _compute(self, predictions, references):
        scores = self._scores(list(predictions), list(references))
        return {"success": sum(scores) / len(scores) if scores else float("nan"), "scores": scores}


class PosMatch(_Success):
    description = "word-level POS exact match between the oracle tags of the generation and the target tags"

    def _scores(self, predictions, references):
        return [pos_score(p, r) for p, r in zip(predictions, references)]


class TreeF1(_Success):
    description = "labelled bracket F1 of the oracle parse of the generation against the target tree"

    def _scores(self, predictions, references):
        return tree_scores(predictions, references, self.parser)


class SpanMatch(_Success):
    description = "whether the oracle parse of the generation contains the target labelled span"

    def _scores(self, predictions, references):
        return span_scores(predictions, references, self.parser)


class SemanticContent(_Success):
    description = "whether the target field's value appears in the generation"

    def _scores(self, predictions, references):
        return [semantic_score(p, r) for p, r in zip(predictions, references)]


class LengthMatch(_Success):
    description = f"whether the generation's length is within ±{LENGTH_TOLERANCE} tokens of the target"

    def _scores(self, predictions, references):
        return [length_score(p, r) for p, r in zip(predictions, references)]


class ComposeMatch(_Success):
    description = "POS match of the generation, counted only where the semantic target's value also appears"

    def _scores(self, predictions, references):
        return [compose_score(p, r) for p, r in zip(predictions, references)]


_CLASSES = {cls.__name__: cls for cls in (SemanticContent, PosMatch, TreeF1, SpanMatch, LengthMatch, ComposeMatch)}
METRICS = {task: _CLASSES[REGISTRY[task].metric] for task in TARGET_TASKS}  # the registry names each task's class
TASKS = TARGET_TASKS

_CITATION = """@inproceedings{li2022diffusionlm, title={Diffusion-LM Improves Controllable Text Generation},
author={Li, Xiang Lisa and Thickstun, John and Gulrajani, Ishaan and Liang, Percy and Hashimoto, Tatsunori},
booktitle={NeurIPS}, year={2022}}"""


def target_text(task: str, target) -> str:
    """The text form of a target as metrics read it (lists and ints become strings)."""
    return REGISTRY[task].text(target) if task in REGISTRY else str(target)

