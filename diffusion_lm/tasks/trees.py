"""Constituency trees as targets name them: reading a bracketed tree, labelled spans, writing one back.

Spans are `(i, j, label)` with inclusive word indices, the form span targets
use (`[3, 5, "PP"]`). With `evalb=True`, spans follow EVALB's COLLINS.prm
conventions: punctuation is deleted before spans are counted, ADVP and PRT
are one label, function tags (NP-SBJ → NP) are stripped, preterminals are
not brackets. (EVALB's F1 itself, and cleaning Penn Treebank trees, are in
`diffusion_lm.eval.trees`.)
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
        raise UserError(f"malformed tree: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    for sub in tree.subtrees():
        if len(sub) == 0:
            raise UserError(f"malformed tree (empty constituent {sub.label()!r}): {text[:60]!r}")
    if not tree.leaves():
        raise UserError(f"malformed tree (no words): {text[:60]!r}")
    return tree


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


def tree_to_string(tree: Tree) -> str:
    return " ".join(str(tree).split())
