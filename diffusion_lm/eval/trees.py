"""Scoring trees the EVALB way, and cleaning Penn Treebank trees for the parser oracle.

Scoring follows EVALB's COLLINS.prm conventions (see `labelled_spans` with
evalb=True): punctuation is deleted before spans are counted, ADVP and PRT are
one label, function tags (NP-SBJ → NP) are stripped, preterminals are not
brackets. Reading trees and their spans is the task grammar's
(`diffusion_lm.tasks.trees`), shared with every package that reads targets.
"""
from __future__ import annotations

from nltk import Tree

from ..tasks.trees import base_label, labelled_spans


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
