"""The front's selection, points, table and plot on hand-made trial results (no Ray, no training)."""

from __future__ import annotations

import pytest

from orchestrator.budget import parse_budget
from orchestrator.front import FrontSpec, NoStudentFits, budget_line, confirmed_points, select, spec_of, table
from orchestrator.leaderboard import TrialSummary
from orchestrator.report.plots import plot_front

SPEC = FrontSpec("val/acc1", "max", "cost/latency_ms")
# width -> (latency ms, MACs)
COST = {0.25: (0.01, 1e5), 0.5: (0.02, 3e5), 1.0: (0.05, 1e6), 2.0: (0.15, 4e6)}


def _cost(params: dict) -> dict:
    ms, macs = COST[params["model.student_width"]]
    return {"cost/latency_ms": ms, "cost/macs": macs, "cost/params": macs / 10}


def _record(params: dict) -> dict:
    return {"arch": f"cnn_student_small[width={params['model.student_width']}]", **_cost(params)}


def _trial(number: int, width: float, acc: float, lr: float = 0.1, outcome: str = "completed") -> TrialSummary:
    params = {"model.student_width": width, "distill.method": "kd", "train.lr": lr}
    return TrialSummary(number, f"t{number}", outcome, 2, {"val/acc1": acc}, params, f"/ckpt/{number}")


TRIALS = [
    _trial(0, 1.0, 0.90),                # front
    _trial(1, 1.0, 0.88, lr=0.2),        # dominated by 0 (same latency, less accurate)
    _trial(2, 0.5, 0.86),                # front
    _trial(3, 0.5, 0.86, lr=0.3),        # front: a tie with 2 in both objectives
    _trial(4, 2.0, 0.89),                # dominated by 0 (slower and less accurate)
    _trial(5, 0.25, 0.80),               # front: the fastest
    _trial(6, 2.0, 0.95, outcome="early_stopped"),  # stopped early: never a candidate
    _trial(7, 0.5, 0.70),                # dominated by 2 and 3
    _trial(8, 0.5, 0.87, lr=0.3),        # the same config as 3, searched twice: counts once, at its best
]


def test_select_confirms_the_pareto_front_of_completed_trials_cheapest_first():
    cands = select(TRIALS, [], SPEC, top_k=10, cost_of=_cost)
    distilled = [c for c in cands if c.role != "alone"]
    # trial 8 (0.87) replaces trial 3 (same params, 0.86) and then dominates trial 2 (0.86 at the same cost)
    assert [c.trial for c in distilled] == [5, 8, 0]
    alones = [c for c in cands if c.role == "alone"]
    assert len(alones) == 3 and all(c.alone is not None for c in distilled)
    for c in distilled:  # each paired with its own architecture and optimiser settings alone
        assert c.alone.params == {"model.student_width": c.params["model.student_width"], "train.lr": c.params["train.lr"]}
        assert c.alone.overrides["distill.method"] == "ce" and c.alone.label == f"trial {c.trial} alone"


def test_ties_are_kept_and_a_long_front_is_spread_along_the_cost():
    trials = [t for t in TRIALS if t.number != 8]
    distilled = [c.trial for c in select(trials, [], SPEC, top_k=10, cost_of=_cost) if c.role != "alone"]
    assert distilled == [5, 2, 3, 0]  # the tie 2/3 (equal in both objectives) is not dominated
    capped = [c.trial for c in select(trials, [], SPEC, top_k=2, cost_of=_cost) if c.role != "alone"]
    assert capped == [5, 0]  # both ends of the front
    capped = [c.trial for c in select(trials, [], SPEC, top_k=3, cost_of=_cost) if c.role != "alone"]
    assert capped[0] == 5 and capped[-1] == 0 and len(capped) == 3


def test_configs_sharing_architecture_and_lr_share_one_alone():
    trials = [_trial(0, 1.0, 0.90), _trial(1, 0.5, 0.86),
              TrialSummary(2, "t2", "completed", 2, {"val/acc1": 0.86},
                           {"model.student_width": 0.5, "distill.method": "dkd", "train.lr": 0.1}, "/c")]
    cands = select(trials, [], SPEC, top_k=5, cost_of=_cost)
    alones = [c for c in cands if c.role == "alone"]
    assert len(alones) == 2
    shared = next(a for a in alones if a.params["model.student_width"] == 0.5)
    assert shared.label == "trial 1 + trial 2 alone"
    assert [c.alone for c in cands if c.trial in (1, 2)] == [shared, shared]
    assert all(c.role != "alone" for c in select(trials, [], SPEC, top_k=5, cost_of=_cost, baseline=False))


def test_budget_mode_picks_the_most_accurate_trial_within_the_budget():
    spec = FrontSpec("val/acc1", "max", "cost/latency_ms", parse_budget("latency_ms <= 0.02"))
    cands = select(TRIALS, [], spec, top_k=3, cost_of=_cost)
    assert [c.trial for c in cands if c.role != "alone"] == [8]  # 0.87 at 0.02 ms; trial 0 (0.90) is over budget
    macs = FrontSpec("val/acc1", "max", "cost/macs", parse_budget("macs <= 1e5"))
    assert [c.trial for c in select(TRIALS, [], macs, top_k=3, cost_of=_cost) if c.role != "alone"] == [5]
    never = FrontSpec("val/acc1", "max", "cost/macs", parse_budget("macs <= 10"))
    with pytest.raises(NoStudentFits, match=r"no student fits cost/macs <= 10: the cheapest completed trial, trial 5"):
        select(TRIALS, [], never, top_k=3, cost_of=_cost)
    with pytest.raises(ValueError, match="no trial completed"):
        select([_trial(0, 1.0, 0.9, outcome="early_stopped")], [], SPEC, top_k=3, cost_of=_cost)


def test_spec_of_reads_objectives_and_budget():
    assert spec_of(None, None, "val/acc1", "max") is None
    assert spec_of({"val/acc1": "max"}, None, "val/acc1", "max") is None  # no cost: the top-k confirmation
    spec = spec_of({"val/acc1": "max", "cost/macs": "min"}, None, "val/acc1", "max")
    assert spec == FrontSpec("val/acc1", "max", "cost/macs")
    budget = parse_budget("cost/latency_ms <= 0.02")
    assert spec_of(None, budget, "val/acc1", "max") == FrontSpec("val/acc1", "max", "cost/latency_ms", budget)


def _confirmed(seeds_acc: dict[int, list[float]]):
    """TRIALS' front confirmed with made-up test results: trial -> [distilled per seed, alone per seed]."""
    cands = select(TRIALS, [], SPEC, top_k=10, cost_of=_cost)
    for c in cands:
        if c.role != "alone":
            distilled, alone = seeds_acc[c.trial]
            c.test, c.val = dict(enumerate(distilled, 1)), dict(enumerate(distilled, 1))
            c.alone.test = dict(enumerate(alone, 1))
    return cands


def test_confirmed_points_carry_cost_gain_and_the_confirmed_front(tmp_path):
    cands = _confirmed({5: ([0.80, 0.82, 0.81], [0.78, 0.79, 0.77]), 8: ([0.79, 0.80, 0.81], [0.79, 0.80, 0.80]),
                        0: ([0.90, 0.91, 0.92], [0.88, 0.90, 0.89])})
    points = confirmed_points(cands, SPEC, _record, 0.95)
    assert [p.cand.trial for p in points] == [5, 8, 0]
    assert points[0].arch == "cnn_student_small[width=0.25]" and points[0].cost["cost/macs"] == 1e5
    assert points[0].gain.mean == pytest.approx(0.03) and points[0].gain.significant
    assert not points[1].gain.significant
    # On fresh seeds trial 8 is less accurate than the cheaper trial 5: off the confirmed front.
    assert [p.on_front for p in points] == [True, False, True]
    summary = points[0].summary({"onnx": "front/1.onnx"})
    assert summary["alone_test_mean"] == pytest.approx(0.78) and summary["gain_vs_alone"]["significant"] is True
    assert summary["cost/latency_ms"] == 0.01 and summary["onnx"] == "front/1.onnx"
    tags = points[0].tags()
    assert tags["arch"] == "cnn_student_small[width=0.25]" and tags["gain_vs_alone_significant"] == "true"
    assert tags["cost/macs"] == "100000" and tags["knobs"] == "method=kd  lr=0.1"
    teacher = {"label": "cnn_teacher", "test_acc1": 0.95, "cost/latency_ms": 0.4, "cost/macs": 1.5e7, "cost/params": 1e6}
    text = table(points, SPEC, [1, 2, 3], teacher)
    assert "teacher cnn_teacher" in text and "(reference)" in text and "95.00" in text
    assert "1. cnn_student_small[width=0.25]" in text and "+3.00 points [" in text and "not significant" in text
    path = plot_front(points, teacher, [1, 2, 3], tmp_path / "front.png", "front")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    line = budget_line(points[0], parse_budget("latency_ms <= 0.02"))
    assert line.startswith("Within cost/latency_ms <= 0.02: cnn_student_small[width=0.25] (trial 5;")
    assert "over the same architecture alone: +3.00 points" in line
