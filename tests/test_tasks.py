"""The task registry: one entry per task, read by the metrics, the classifiers and the baselines."""
import pytest
from nltk import Tree

from classifiers.io import KINDS
from classifiers.tasks import NEEDS, REQUESTS
from classifiers.tasks import TASKS as CLASSIFIER_TASKS
from diffusion_lm.baselines.fudge import FUDGE_TASKS, FutureDiscriminator
from diffusion_lm.baselines.pplm import TASKS as PPLM_TASKS
from diffusion_lm.errors import UserError
from diffusion_lm.eval.metrics import METRICS, target_text
from diffusion_lm.eval.targets import RECIPES
from diffusion_lm.tasks import TARGET_TASKS, TASKS, get_task


def test_every_task_is_registered_once_with_what_each_consumer_reads():
    assert list(TASKS) == ["semantic", "pos", "tree", "spans", "length", "compose", "infill"]
    assert TARGET_TASKS == ("semantic", "pos", "tree", "spans", "length", "compose")  # Table 2's order
    assert list(METRICS) == list(TARGET_TASKS) and all(METRICS[t].__name__ == TASKS[t].metric for t in TARGET_TASKS)
    assert set(RECIPES) == set(TARGET_TASKS)
    assert CLASSIFIER_TASKS == TARGET_TASKS and set(REQUESTS) == set(TARGET_TASKS)
    assert NEEDS == {t: TASKS[t].needs for t in TARGET_TASKS}
    assert all(set(t.needs) <= set(KINDS) for t in TASKS.values())
    assert all(set(t.fudge_heads) <= set(FutureDiscriminator._TERMS) for t in TASKS.values())
    assert FUDGE_TASKS == TARGET_TASKS and PPLM_TASKS == ("semantic",)
    assert {t: TASKS[t].default_strength for t in TASKS} == {**{t: 50.0 for t in TARGET_TASKS}, "infill": None}


def test_examples_parse_into_the_parts_they_constrain():
    got = {name: t.parse(t.example) for name, t in TASKS.items()}
    assert got["pos"].tags == "DT NNP VBZ DT JJ NN .".split() and got["pos"].length == 7
    assert got["tree"].length == 6 and got["tree"].tags[:2] == ["DT", "NNP"] and isinstance(got["tree"].tree, Tree)
    assert got["spans"].span == (3, 5, "PP")
    assert got["semantic"].semantic == ("food", "Italian")
    assert got["length"].length == 12
    assert got["compose"].semantic == ("food", "Italian") and got["compose"].length == 5
    assert got["infill"].context == ("The Eagle is", "in the city centre .")


def test_structured_targets_and_their_text_form_parse_alike():
    for task, target in [("spans", [3, 5, "PP"]), ("pos", ["DT", "NN"]), ("length", 12),
                         ("compose", {"pos": "DT NN", "semantic": "food : Italian"})]:
        a, b = get_task(task).parse(target), get_task(task).parse(target_text(task, target))
        assert (a.tags, a.length, a.span, a.semantic) == (b.tags, b.length, b.span, b.semantic)


@pytest.mark.parametrize("task,target,message", [
    ("pos", 3, "malformed POS target"), ("semantic", 3, "malformed semantic"), ("tree", [1], "malformed tree"),
    ("spans", "x", "malformed span"), ("length", None, "not an integer"), ("compose", 3, "malformed compose"),
    ("infill", "no gap here", "malformed infill"), ("spans", [0, 9, "NP"], "outside a sentence of 5 words"),
])
def test_bad_targets_of_any_shape_are_one_line_errors(task, target, message):
    with pytest.raises(UserError, match=message) as e:
        get_task(task).validate(target, 5)
    assert "\n" not in str(e.value)


def test_unknown_tasks_list_the_choices():
    with pytest.raises(UserError, match=r"unknown task 'colour' \(known: semantic, pos, .*, infill\)"):
        get_task("colour")
    with pytest.raises(UserError, match=r"known: semantic, pos, tree, spans, length, compose\)"):
        get_task("infill", TARGET_TASKS)
