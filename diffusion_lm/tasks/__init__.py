"""The task registry: every control task defined once.

A `Task` holds its target parser and validator, its metric, the classifier
kinds Diffusion-LM control needs, the FUDGE heads it uses, whether PPLM
supports it and its default guidance strength:

    >>> from diffusion_lm.tasks import get_task
    >>> get_task("pos").parse("DT NN VBZ").length
    3
    >>> get_task("pos").needs, get_task("pos").metric
    (('pos',), 'PosMatch')

Consumers read the registry instead of switching on task names: the metrics
(`eval.metrics.METRICS`), the report and the targets files, the classifier
requests (`classifiers.tasks`), FUDGE's heads and PPLM's task list.
"""
from __future__ import annotations

from ..errors import UserError
from .task import Target, Task
from .text import (TEXT_TASKS, parse_compose_target, parse_infill_target, parse_length_target, parse_pos_target,
                   parse_semantic_target, parse_span_target)

TASKS: dict[str, Task] = {t.name: t for t in TEXT_TASKS}
# the tasks that take a target to meet and score (infilling's context is held, not scored), in Table 2's order
TARGET_TASKS: tuple[str, ...] = tuple(name for name, t in TASKS.items() if t.scored)


def get_task(name: str, among: tuple[str, ...] | None = None) -> Task:
    """The task called `name` (one of `among`, where given), or a one-line UserError listing the choices."""
    choices = tuple(TASKS) if among is None else tuple(among)
    if name not in choices:
        raise UserError(f"unknown task {name!r} (known: {', '.join(choices)})")
    return TASKS[name]


__all__ = ["TARGET_TASKS", "TASKS", "Target", "Task", "get_task", "parse_compose_target", "parse_infill_target",
           "parse_length_target", "parse_pos_target", "parse_semantic_target", "parse_span_target"]
