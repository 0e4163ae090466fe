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

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from diffusion_lm.core.guidance import Control
from diffusion_lm.tasks import TARGET_TASKS, Target, get_task
from diffusion_lm.tasks import TASKS as REGISTRY

from .tree import TreeTarget

TASKS = TARGET_TASKS  # the registry's tasks with targets; infilling holds a context instead
NEEDS = {task: REGISTRY[task].needs for task in TASKS}  # length may add the tagger (generate's length_shape)


@dataclass
class Request:
    """One parsed target: per-classifier targets for one sample, and the length to hold (or None)."""

    parts: list[tuple[str, Any]] = field(default_factory=list)  # (classifier kind, that classifier's target)
    length: int | None = None
    steer: tuple[str, ...] = ()  # kinds whose target only shapes the sentence (a borrowed tree's tags), not
    #                                a control the sentence must meet (Control.required); the same in every batch row


def _tree_request(tree, classifiers: dict, borrowed: bool = False) -> Request:
    """Steer toward a whole tree and its tags; a `borrowed` training tree may hold labels the classifier lacks."""
    clf = classifiers["tree"]
    tt = clf.shape_target(tree) if borrowed else clf.tree_target(tree)
    row = classifiers["pos"].tree_row([tag for _, tag in tree.pos()])
    return Request([("tree", tt), ("pos", row)], int(tt.lengths[0]))


# ---- one Request per task, from its parsed Target (the classifier side of the registry) --------------

def _length(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    if "pos" in classifiers:  # steer toward the tags of a training sentence of that length
        return Request([("pos", classifiers["pos"].length_row(goal.length, generator))], goal.length, steer=("pos",))
    return Request(length=goal.length)


def _pos(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    row, n = classifiers["pos"].target(goal.tags)
    return Request([("pos", row)], n)


def _tree(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    return _tree_request(goal.tree, classifiers)


def _spans(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    clf, target = classifiers["tree"], goal.source
    clf.span_target(target, clf.size)  # checks the label and the range
    shape = clf.exemplar(target, generator)
    if shape is not None and "pos" in classifiers:  # the borrowed tree's tags are a shape, not the target
        return replace(_tree_request(shape, classifiers, borrowed=True), steer=("pos",))
    n = clf.span_length(target, generator)
    no_tags = [("pos", classifiers["pos"].tree_row([]))] if "pos" in classifiers else []  # batch alike
    return Request([("tree", clf.span_target(target, n)), *no_tags], n, steer=("pos",))


def _semantic(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    return Request([("semantic", classifiers["semantic"].target(goal.semantic))])


def _compose(goal: Target, classifiers: dict, generator: torch.Generator) -> Request:
    row, n = classifiers["pos"].target(goal.tags)
    return Request([("pos", row), ("semantic", classifiers["semantic"].target(goal.semantic))], n)


REQUESTS: dict[str, Callable[[Target, dict, torch.Generator], Request]] = {
    "length": _length, "pos": _pos, "tree": _tree, "spans": _spans, "semantic": _semantic, "compose": _compose}


def parse_request(task: str, target, classifiers: dict, max_words: int, generator: torch.Generator) -> Request:
    """Validate a target against the classifiers (one-line UserError) and turn it into a Request."""
    goal = get_task(task, TASKS).parse(target, max_words)
    return REQUESTS[task](goal, classifiers, generator)


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
        out.append(Control(classifiers[kind], batched, getattr(classifiers[kind], "guidance_weight", 1.0),
                           required=kind not in requests[0].steer))
    return out
