"""From a task and a target to what the sampler needs: controls (classifier, target, weight) and a length.

| task | classifier | length held by masked replacement |
| --- | --- | --- |
| pos | pos tagger, log p(tags) | the number of tags |
| tree | span parser, log p(tree), + the tagger on the tree's preterminal tags | the tree's words |
| spans | span parser + tagger toward a training tree that holds the span (else log p(span in tree)) | that tree's words (else a typical length for the label) |
| semantic | stated values, log p(value stated) | free |
| compose | pos + semantic, their log-probabilities summed | the number of tags |
| length | none, or (length_shape) the tagger toward a training sentence's tags of that length | the target |

POS and tree targets fix the sentence's length, so the length is held by
the same masked replacement that length control uses, and the classifier
spends its gradient on the words alone. A bracketed tree also names each
word's part of speech (its preterminals); tree control uses them through the
POS classifier, composed with the span parser by summing log-probabilities.
A span target borrows a whole shape: a training tree (kept with the tree
classifier) that has a constituent with that label over the same words, and
is then controlled like a tree target. Where no training tree has the span,
the span parser's marginal log p(span in tree) is used alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from diffusion_lm.core.guidance import Control
from diffusion_lm.errors import UserError
from diffusion_lm.eval.metrics import parse_length_target
from diffusion_lm.eval.trees import parse_bracketed

from .tree import TreeTarget

TASKS = ("pos", "tree", "spans", "semantic", "compose", "length")
NEEDS = {"pos": ("pos",), "tree": ("tree", "pos"), "spans": ("tree", "pos"), "semantic": ("semantic",),
         "compose": ("pos", "semantic"), "length": ()}  # length may add the tagger (generate's length_shape)


@dataclass
class Request:
    """One parsed target: per-classifier targets for one sample, and the length to hold (or None)."""

    parts: list[tuple[str, Any]] = field(default_factory=list)  # (classifier kind, that classifier's target)
    length: int | None = None


def compose_parts(target) -> dict:
    """A compose target: {"pos": ..., "semantic": ...} as a dict or its JSON text."""
    if isinstance(target, str):
        try:
            target = json.loads(target)
        except json.JSONDecodeError:
            raise UserError(f"malformed compose target {target!r}: expected JSON like "
                            '{"pos": "DT NN VBZ ...", "semantic": "food : Italian"}') from None
    if not isinstance(target, dict) or set(target) != {"pos", "semantic"}:
        raise UserError(f"a compose target needs exactly the keys pos and semantic, got {target!r}")
    return target


def _tree_request(tree, classifiers: dict, borrowed: bool = False) -> Request:
    """Steer toward a whole tree and its tags; a `borrowed` training tree may hold labels the classifier lacks."""
    clf = classifiers["tree"]
    tt = clf.shape_target(tree) if borrowed else clf.tree_target(tree)
    row = classifiers["pos"].tree_row([tag for _, tag in tree.pos()])
    return Request([("tree", tt), ("pos", row)], int(tt.lengths[0]))


def parse_request(task: str, target, classifiers: dict, max_words: int, generator: torch.Generator) -> Request:
    """Validate a target against the classifiers (one-line UserError) and turn it into a Request."""
    if task == "length":
        n = parse_length_target(target, max_words)
        if "pos" in classifiers:  # steer toward the tags of a training sentence of that length
            return Request([("pos", classifiers["pos"].length_row(n, generator))], n)
        return Request(length=n)
    if task == "pos":
        row, n = classifiers["pos"].target(target)
        return Request([("pos", row)], n)
    if task == "tree":
        return _tree_request(parse_bracketed(target) if isinstance(target, str) else target, classifiers)
    if task == "spans":
        clf = classifiers["tree"]
        clf.span_target(target, clf.size)  # checks the label and the range
        shape = clf.exemplar(target, generator)
        if shape is not None and "pos" in classifiers:
            return _tree_request(shape, classifiers, borrowed=True)
        n = clf.span_length(target, generator)
        no_tags = [("pos", classifiers["pos"].tree_row([]))] if "pos" in classifiers else []  # batch alike
        return Request([("tree", clf.span_target(target, n)), *no_tags], n)
    if task == "semantic":
        return Request([("semantic", classifiers["semantic"].target(target))])
    if task == "compose":
        parts = compose_parts(target)
        row, n = classifiers["pos"].target(parts["pos"])
        return Request([("pos", row), ("semantic", classifiers["semantic"].target(parts["semantic"]))], n)
    raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def controls_for(requests: list[Request], classifiers: dict, device=None) -> list[Control]:
    """Batch the per-sample targets of each classifier into one Control per classifier."""
    kinds = [k for k, _ in requests[0].parts]
    out = []
    for pos, kind in enumerate(kinds):
        targets = [r.parts[pos][1] for r in requests]
        if kind == "tree":
            batched = TreeTarget.stack(targets, device)
        elif kind == "pos":
            batched = torch.stack(targets).to(device)
        else:
            batched = classifiers[kind].stack_targets(targets).to(device)
        out.append(Control(classifiers[kind], batched))
    return out
