"""Stage selectors (distill/stages.py): one knob value that picks stages on every model, and pairing."""

from __future__ import annotations

import pytest
import torch

from orchestrator.distill.checks import KnobError
from orchestrator.distill.stages import check_selector, pair, pool_to_smaller, select, select_all
from orchestrator.models.base import Shapes

NAMES = ("stem", "stage1", "stage2", "stage3")


@pytest.mark.parametrize("selector, picked", [
    ("-1", ("stage3",)),
    ("last", ("stage3",)),
    ("-2", ("stage2",)),
    ("0", ("stem",)),
    ("1:", ("stage1", "stage2", "stage3")),  # RepDistiller's feat[1:-1]
    ("-2:", ("stage2", "stage3")),
    (":", NAMES),
    ("stage2", ("stage2",)),
    ("stage3, 1", ("stage1", "stage3")),  # model order, each once
    ("-1,stage3", ("stage3",)),
])
def test_selectors_pick_stages_in_model_order(selector, picked):
    assert select(selector, NAMES) == picked


@pytest.mark.parametrize("selector, message", [
    ("stage9", r"has no stage\(s\) \['stage9'\]"),
    ("4", "no stage at position 4"),
    ("-5", "no stage at position -5"),
    ("9:", "picks no stage"),
])
def test_selectors_that_pick_nothing_name_the_stages(selector, message):
    with pytest.raises(ValueError, match=message) as info:
        select(selector, NAMES, "the teacher")
    assert "the teacher" in str(info.value) and "stage1" in str(info.value)


@pytest.mark.parametrize("selector", ["", "1::2", "a b", "-", "1:x", ","])
def test_malformed_selectors_are_knob_errors(selector):
    with pytest.raises(KnobError, match="stages"):
        check_selector("stages", selector)


def test_select_all_is_the_union_in_model_order():
    assert select_all(("-1", "stage1", "1:2"), NAMES) == ("stage1", "stage3")
    assert select_all((), NAMES) == ()


def test_pairing_aligns_the_deepest_stages_when_counts_differ():
    student = Shapes(4, {"stage1": (8, 14, 14), "stage2": (16, 7, 7), "stage3": (32, 7, 7)})
    teacher = Shapes(8, {"stage1": (32, 28, 28), "stage2": (64, 14, 14), "stage3": (128, 7, 7), "stage4": (128, 4, 4)})
    assert pair("1:", student, teacher, "k") == [(1, 2), (2, 3)]
    assert pair("-2", student, teacher, "k") == [(1, 2)]
    assert pair(":", teacher, teacher, "k") == [(0, 0), (1, 1), (2, 2), (3, 3)]
    with pytest.raises(ValueError, match=r"^distill.x.stages: the student has no stage\(s\) \['stage4'\]"):
        pair("stage4", student, teacher, "distill.x.stages")


def test_pool_to_smaller_pools_the_larger_map_per_dimension():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 5, 4, 4)
    pa, pb = pool_to_smaller(a, b)
    assert pb is b and pa.shape == (2, 3, 4, 4)
    torch.testing.assert_close(pa[0, 0, 0, 0], a[0, 0, :2, :2].mean())
    assert pool_to_smaller(b, a)[1].shape == (2, 3, 4, 4)
    same = pool_to_smaller(a, a)
    assert same[0] is a and same[1] is a
