"""Pareto extraction against a hand-made example with ties and dominated points."""

from __future__ import annotations

import math

import pytest

from orchestrator.sweep.pareto import dominates, pareto_front

OBJ = {"val/acc1": "max", "cost/latency_ms": "min"}


def _p(acc, lat):
    return {"val/acc1": acc, "cost/latency_ms": lat}


def test_pareto_front_matches_a_hand_made_example():
    points = [
        _p(0.90, 1.0),  # 0 front: the most accurate
        _p(0.85, 0.5),  # 1 front
        _p(0.85, 0.5),  # 2 front: a tie with 1 (equal in both) is not dominated
        _p(0.84, 0.5),  # 3 dominated by 1 (same latency, less accurate)
        _p(0.80, 0.2),  # 4 front: the fastest
        _p(0.80, 0.3),  # 5 dominated by 4 (same accuracy, slower)
        _p(0.70, 0.9),  # 6 dominated by 1, 2, 4 (worse in both)
        _p(0.90, 1.2),  # 7 dominated by 0 (same accuracy, slower)
        _p(0.95, None),  # 8 no latency: never on the front, dominates nothing
        _p(math.nan, 0.1),  # 9 no accuracy
    ]
    assert pareto_front(points, OBJ) == [0, 1, 2, 4]
    # one objective: only the best and its ties (point 8 counts here: it has an accuracy)
    assert pareto_front(points[:8], {"val/acc1": "max"}) == [0, 7]
    assert pareto_front(points, {"val/acc1": "max"}) == [8]


def test_dominance_is_strict():
    assert dominates(_p(0.9, 1.0), _p(0.9, 1.1), OBJ)
    assert not dominates(_p(0.9, 1.0), _p(0.9, 1.0), OBJ)
    assert not dominates(_p(0.9, 1.0), _p(0.8, 0.5), OBJ)


def test_objectives_are_checked():
    with pytest.raises(ValueError, match="max or min"):
        pareto_front([_p(0.9, 1.0)], {"val/acc1": "maximise"})
