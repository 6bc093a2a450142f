"""Deployment budgets: parsed with aliases, checked, and "no student fits" said with the cheapest one."""

from __future__ import annotations

import pytest

from orchestrator.config.budget import Budget, no_fit_problem, parse_budget
from orchestrator.sweep.pareto import pareto_front, spread


def test_budgets_parse_with_aliases():
    assert parse_budget("cost/latency_ms <= 0.02") == Budget("cost/latency_ms", 0.02)
    assert parse_budget("macs<=2e6") == Budget("cost/macs", 2e6)
    assert str(parse_budget("params <= 50000")) == "cost/params <= 50000"


@pytest.mark.parametrize("text", ["macs < 2e6", "flops <= 1", "macs <= -1", "macs <= lots", ""])
def test_bad_budgets_say_the_form(text):
    with pytest.raises(ValueError, match="'<metric> <= <number>'"):
        parse_budget(text)


def test_no_student_fits_names_the_cheapest():
    costs = {"a": {"cost/macs": 3e6}, "b": {"cost/macs": 2.5e6}}
    assert no_fit_problem(Budget("cost/macs", 2e6), costs) == (
        "no student fits cost/macs <= 2e+06: the cheapest the space can train, b, has cost/macs = 2.5e+06")
    assert no_fit_problem(Budget("cost/macs", 2.5e6), costs) is None  # <= : the limit itself fits


def test_a_long_front_is_capped_keeping_both_ends():
    points = [{"acc": 0.80 + i / 100, "lat": float(i)} for i in range(7)]  # every point on the front
    front = pareto_front(points, {"acc": "max", "lat": "min"})
    assert front == list(range(7))
    assert spread(points, front, "lat", 3) == [0, 3, 6]
    assert spread(points, front, "lat", 2) == [0, 6]
    assert spread(points, front, "lat", 10) == list(range(7)) and spread(points, front, "lat", 0) == []
