"""Constituency trees: reading, cleaning Penn Treebank trees, labelled spans and EVALB F1.

Spans are `(i, j, label)` with inclusive word indices, the form control targets
use (`[3, 5, "PP"]`). Scoring follows EVALB's COLLINS.prm conventions:
punctuation is deleted before spans are counted, ADVP and PRT are one label,
function tags (NP-SBJ → NP) are stripped, preterminals are not brackets.
"""
from __future__ import annotations

import re
from collections import Counter

from nltk import Tree

from ..errors import UserError

PUNCT_TAGS = frozenset({",", ":", "``", "''", ".", "-NONE-"})
EQUIVALENT = {"PRT": "ADVP"}


def base_label(label: str) -> str:
    """NP-SBJ-1 → NP, PP=2 → PP; -NONE-, -LRB- and -RRB- stay as they are."""
    if label.startswith("-"):
        return label
    return re.split(r"[-=]", label, maxsplit=1)[0] or label


def parse_bracketed(text: str) -> Tree:
    """A tree from its bracketed string, or a one-line UserError saying what is wrong."""
    text = text.strip()
    if not text.startswith("("):
        raise UserError(f"malformed tree (must start with '('): {text[:60]!r}")
    if text.count("(") != text.count(")"):
        raise UserError(f"malformed tree (unbalanced brackets): {text[:60]!r}")
    try:
        tree = Tree.fromstring(text)
    except ValueError as e:
        raise UserError(f"malformed tree: {str(e).splitlines()[0]}") from None
    for sub in tree.subtrees():
        if len(sub) == 0:
            raise UserError(f"malformed tree (empty constituent {sub.label()!r}): {text[:60]!r}")
    if not tree.leaves():
        raise UserError(f"malformed tree (no words): {text[:60]!r}")
    return tree


def clean_ptb(tree: Tree) -> Tree | None:
    """A WSJ tree without traces (-NONE-), constituents left empty by them, or function tags.

    This is what a parser trains on; None if nothing is left.
    """
    if isinstance(tree, str):
        return tree
    if tree.label() == "-NONE-":
        return None
    kids = [k for k in (clean_ptb(c) for c in tree) if k is not None]
    if not kids:
        return None
    is_preterminal = len(kids) == 1 and isinstance(kids[0], str)
    return Tree(tree.label() if is_preterminal else base_label(tree.label()), kids)


def labelled_spans(tree: Tree, evalb: bool = True) -> Counter:
    """The multiset of (i, j, label) brackets over word positions (j inclusive).

    With evalb=True, punctuation words are removed first, so positions count
    only the words EVALB scores, and ADVP/PRT are merged. Preterminals and a
    bare TOP/ROOT wrapper are not brackets.
    """
    out: Counter = Counter()

    def walk(t, start: int) -> int:
        if isinstance(t, str):
            return start + 1
        if len(t) == 1 and isinstance(t[0], str):  # preterminal
            return start if (evalb and t.label() in PUNCT_TAGS) else start + 1
        end = start
        for kid in t:
            end = walk(kid, end)
        label = base_label(t.label())
        if evalb:
            label = EQUIVALENT.get(label, label)
        if end > start and label not in ("TOP", "ROOT", ""):
            out[(start, end - 1, label)] += 1
        return end

    walk(tree, 0)
    return out


def bracket_f1(gold: Tree, pred: Tree) -> float:
    """Labelled bracket F1 (0..1) of pred against gold, EVALB conventions.

    Both trees must cover the same words (a generation parsed by the oracle is
    compared with a target tree of the same length only where the words line
    up; callers handle length mismatch, see metrics.TreeF1).
    """
    g, p = labelled_spans(gold), labelled_spans(pred)
    match = sum((g & p).values())
    if not g and not p:
        return 1.0
    if match == 0:
        return 0.0
    precision, recall = match / sum(p.values()), match / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def tree_to_string(tree: Tree) -> str:
    return " ".join(str(tree).split())
