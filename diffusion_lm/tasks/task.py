"""What a task is: a target grammar, a metric, and what each controller needs to steer toward it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Target:
    """A parsed target: the parts of a sentence it constrains (None = left free).

    Controllers read the parts, not the task's name: FUDGE's heads take the
    tags, the length, the span(s) and the value they find here.
    """

    source: Any  # the target as given (text, list, dict or nltk Tree)
    tags: list[str] | None = None  # one POS tag per word
    tagset: str | None = None  # "ptb" or "universal"
    length: int | None = None  # number of words
    tree: Any = None  # an nltk Tree over the sentence's words
    span: tuple[int, int, str] | None = None  # (i, j, label), inclusive word indices
    semantic: tuple[str, str] | None = None  # (field, value) to state
    context: tuple[str, str] | None = None  # infilling: (words before, words after) the gap


@dataclass(frozen=True)
class Task:
    """One control task, defined once: `diffusion_lm.tasks.get_task(name)`.

    parse(target, n_words) checks a target (its text form or a structured one)
    and returns its `Target`; a bad target is a one-line UserError. n_words,
    where given, bounds targets that name positions or a length (spans, length).
    """

    name: str
    parse: Callable[[Any, int | None], Target]
    text: Callable[[Any], str]  # the target's text form, as metrics and JSONL rows hold it
    metric: str | None  # the `evaluate` metric class in diffusion_lm.eval.metrics; None = not scored
    needs: tuple[str, ...] = ()  # classifier kinds Diffusion-LM control loads (classifiers.io.KINDS)
    fudge_heads: tuple[str, ...] = ()  # FUDGE discriminator heads its targets use (tag, length, span, value)
    pplm: bool = False  # PPLM has an attribute model for it
    default_strength: float | None = None  # λ for classifier guidance when the user gives none
    example: str = ""  # a target, as a user writes it
    summary: str = ""

    def validate(self, target, n_words: int | None = None) -> None:
        """A one-line UserError if the target is malformed."""
        self.parse(target, n_words)

    @property
    def scored(self) -> bool:
        return self.metric is not None
