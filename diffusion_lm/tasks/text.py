"""The text tasks of Li et al. (2022) on E2E, and their target grammar.

| task | target text | a Target's parts |
| --- | --- | --- |
| semantic | `"food : Italian"` (a known E2E field) | semantic |
| pos | `"DT NNP VBZ DT JJ NN ."` (PTB or universal tags) | tags, length |
| tree | a bracketed tree, `"(TOP (S (NP ...) (VP ...)))"` | tree, its preterminal tags, length |
| spans | `"[3, 5, \\"PP\\"]"` (inclusive word indices) | span |
| length | `"12"` | length |
| compose | `{"pos": tags, "semantic": "field : value"}` (or its JSON text) | tags, length, semantic |
| infill | `"The Eagle is ___ in the city centre ."` | context |

Every parser raises a one-line UserError naming what is wrong.
"""
from __future__ import annotations

import json
import math
import re

from nltk import Tree

from ..data.e2e import MR_FIELDS
from ..errors import UserError
from .tagsets import UNIVERSAL_TAGS, ptb_tags
from .task import Target, Task
from .trees import parse_bracketed

GAP = "___"  # an infilling context's gap


# --- the grammar: one function per target kind ----------------------------------------------

def parse_pos_target(target: str | list[str]) -> tuple[list[str], str]:
    """Tags and their tagset ('ptb' or 'universal'), or a UserError naming the unknown tag."""
    if not isinstance(target, (str, list, tuple)):
        raise UserError(f"malformed POS target {target!r}: expected tags separated by spaces")
    tags = target.split() if isinstance(target, str) else list(target)
    if not tags:
        raise UserError("empty POS target")
    if not all(isinstance(t, str) for t in tags):
        bad = next(t for t in tags if not isinstance(t, str))
        raise UserError(f"malformed POS target: tag {bad!r} is not text")
    ptb = ptb_tags()
    if all(t in ptb for t in tags):
        return tags, "ptb"
    if all(t in UNIVERSAL_TAGS for t in tags):
        return tags, "universal"
    bad = next((t for t in tags if t not in ptb and t not in UNIVERSAL_TAGS), None)
    if bad is None:  # every tag is known, but not all in one tag set
        raise UserError(f"POS target {' '.join(tags)!r} mixes Penn Treebank and universal tags; use one tag set")
    raise UserError(f"unknown POS tag {bad!r}: not a Penn Treebank or universal tag")


def parse_span_target(target: str | list, n_words: int | None = None) -> tuple[int, int, str]:
    """`[i, j, "LABEL"]` (inclusive word indices) checked for shape and, given n_words, range."""
    span = target
    if isinstance(target, str):
        try:
            span = json.loads(target)
        except json.JSONDecodeError:
            raise UserError(f"malformed span target {target!r}: expected [i, j, \"LABEL\"]") from None
    if (not isinstance(span, (list, tuple)) or len(span) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in span[:2])
            or not isinstance(span[2], str) or not span[2]):
        raise UserError(f"malformed span target {target!r}: expected [i, j, \"LABEL\"]")
    i, j, label = span
    if i < 0 or j < i:
        raise UserError(f"bad span target {list(span)}: need 0 <= i <= j")
    if n_words is not None and j >= n_words:
        raise UserError(f"span target {list(span)} lies outside a sentence of {n_words} words")
    return i, j, label


def parse_semantic_target(target: str) -> tuple[str, str]:
    """`"field : value"` with a known E2E field."""
    if not isinstance(target, str):
        raise UserError(f"malformed semantic target {target!r}: expected 'field : value'")
    field, sep, value = target.partition(":")
    field, value = field.strip(), value.strip()
    if not sep or not value:
        raise UserError(f"malformed semantic target {target!r}: expected 'field : value'")
    if field not in MR_FIELDS:
        raise UserError(f"unknown MR field {field!r} (known: {', '.join(MR_FIELDS)})")
    return field, value


def parse_length_target(target: str | int, max_len: int | None = None) -> int:
    """A number of words: an integer, its text, or a whole float (12.0); anything else is a UserError."""
    n = None
    if isinstance(target, int) and not isinstance(target, bool):
        n = target
    elif isinstance(target, float) and math.isfinite(target) and target.is_integer():
        n = int(target)
    elif isinstance(target, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", target.strip()):
        n = int(target)
    if n is None:
        raise UserError(f"length target {target!r} is not an integer")
    if n < 1 or (max_len is not None and n > max_len):
        shown = n if abs(n) < 10 ** 18 else ("a huge number" if n > 0 else "a huge negative number")
        raise UserError(f"length target {shown} out of range 1..{max_len if max_len is not None else '∞'}")
    return n


def parse_compose_target(target) -> dict:
    """`{"pos": tags, "semantic": "field : value"}` (a dict or its JSON text), both parts checked."""
    parts = target
    if isinstance(target, str):
        try:
            parts = json.loads(target)
        except json.JSONDecodeError:
            parts = None
    if not isinstance(parts, dict) or set(parts) != {"pos", "semantic"}:
        raise UserError(f"malformed compose target {target!r}: expected {{\"pos\": tags, \"semantic\": \"field : value\"}}")
    parse_pos_target(parts["pos"])
    parse_semantic_target(parts["semantic"])
    return parts


def parse_infill_target(target: str) -> tuple[str, str]:
    """`"left ___ right"`: the words before and after the gap (either may be empty)."""
    if not isinstance(target, str) or target.count(GAP) != 1:
        raise UserError(f"malformed infill target {target!r}: expected 'words before {GAP} words after'")
    left, _, right = target.partition(GAP)
    return left.strip(), right.strip()


# --- each task's Target ------------------------------------------------------------------------

def _pos(target, n_words=None) -> Target:
    tags, tagset = parse_pos_target(target)
    return Target(target, tags=tags, tagset=tagset, length=len(tags))


def _tree(target, n_words=None) -> Target:
    if isinstance(target, str):
        tree = parse_bracketed(target)
    elif isinstance(target, Tree):
        tree = target
    else:
        raise UserError(f"malformed tree target {target!r}: expected a bracketed tree")
    return Target(target, tree=tree, tags=[tag for _, tag in tree.pos()], tagset="ptb", length=len(tree.leaves()))


def _spans(target, n_words=None) -> Target:
    return Target(target, span=parse_span_target(target, n_words))


def _semantic(target, n_words=None) -> Target:
    return Target(target, semantic=parse_semantic_target(target))


def _length(target, n_words=None) -> Target:
    return Target(target, length=parse_length_target(target, n_words))


def _compose(target, n_words=None) -> Target:
    parts = parse_compose_target(target)
    tags, tagset = parse_pos_target(parts["pos"])
    return Target(target, tags=tags, tagset=tagset, length=len(tags), semantic=parse_semantic_target(parts["semantic"]))


def _infill(target, n_words=None) -> Target:
    return Target(target, context=parse_infill_target(target))


def _plain(target) -> str:
    return str(target)


def _words(target) -> str:
    if isinstance(target, (list, tuple)) and all(isinstance(t, str) for t in target):
        return " ".join(target)
    return target  # text as it is; anything else is left for the parser to reject in one line


def _json(target) -> str:
    if isinstance(target, (list, tuple)):
        try:
            return json.dumps(list(target))
        except (TypeError, ValueError):
            return target
    return target


def _json_dict(target) -> str:
    return target if isinstance(target, str) else json.dumps(target, ensure_ascii=False)


# Table 2's order (semantic, pos, tree, spans, length), then the paper's composition and infilling.
TEXT_TASKS = (
    Task("semantic", _semantic, _plain, "SemanticContent", needs=("semantic",), fudge_heads=("value",), pplm=True,
         default_strength=50.0, example="food : Italian", summary="state a field's value"),
    Task("pos", _pos, _words, "PosMatch", needs=("pos",), fudge_heads=("tag", "length"), default_strength=50.0,
         example="DT NNP VBZ DT JJ NN .", summary="follow a sequence of part-of-speech tags"),
    Task("tree", _tree, _plain, "TreeF1", needs=("tree", "pos"), fudge_heads=("tag", "length", "span"),
         default_strength=50.0, example="(TOP (S (NP (DT The) (NNP Eagle)) (VP (VBZ is) (NP (DT a) (NN pub))) (. .)))",
         summary="follow a whole constituency parse"),
    Task("spans", _spans, _json, "SpanMatch", needs=("tree", "pos"), fudge_heads=("span",), default_strength=50.0,
         example='[3, 5, "PP"]', summary="hold one labelled constituent over given words"),
    Task("length", _length, _plain, "LengthMatch", fudge_heads=("length",), default_strength=50.0, example="12",
         summary="have a number of words (± 2 when scored)"),
    Task("compose", _compose, _json_dict, "ComposeMatch", needs=("pos", "semantic"),
         fudge_heads=("tag", "length", "value"), default_strength=50.0,
         example='{"pos": "NNP VBZ DT NN .", "semantic": "food : Italian"}', summary="pos and semantic at once"),
    Task("infill", _infill, _plain, None, example="The Eagle is ___ in the city centre .",
         summary="fill the words between a left and a right context (held by masked replacement)"),
)
