"""ParetoHalving: successive halving on the non-dominated rank of (accuracy, cost), by hand-made rungs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from orchestrator.sweep.search.pareto_halving import ParetoHalving, fronts_ahead, keeps, rungs

OBJ = {"val/acc1": "max", "cost/macs": "min"}
STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE


def pt(acc, macs):
    return {"val/acc1": acc, "cost/macs": macs}


def test_rungs_are_ashas_milestones():
    assert rungs(1, 9, 3) == [1, 3]
    assert rungs(2, 13, 2) == [2, 4, 8]
    assert rungs(2, 3, 3) == [2]


def test_fronts_ahead_counts_better_fronts_only():
    others = [pt(90, 8), pt(80, 1), pt(85, 4), pt(70, 4), pt(88, 8)]  # F1: 90/8, 80/1, 85/4; F2: 88/8, 70/4 ...
    assert fronts_ahead(pt(86, 2), others, OBJ) == 0  # on the first front
    assert fronts_ahead(pt(84, 4), others, OBJ) == 3  # dominated by 85/4 only, but F1 is ahead as a whole
    assert fronts_ahead(pt(60, 9), others, OBJ) == 5  # behind everything


def test_small_accurate_for_its_size_survives_where_asha_would_stop_it():
    others = [pt(90, 8.0), pt(91, 8.0), pt(89, 8.0), pt(92, 8.0), pt(90.5, 8.0)]  # large students
    small = pt(80, 0.3)  # far less accurate, 27x cheaper: nobody is as cheap
    assert keeps(small, others, OBJ, 3)
    assert not keeps({"val/acc1": 80}, [{"val/acc1": p["val/acc1"]} for p in others], {"val/acc1": "max"}, 3)


def test_dominated_small_student_is_stopped():
    others = [pt(85, 0.3), pt(86, 0.3), pt(90, 8.0)]  # two small students already more accurate
    assert not keeps(pt(80, 0.3), others, OBJ, 3)  # n=4, quota 2: F1 = 86/0.3 and 90/8 are ahead
    assert not keeps(pt(80, 0.3), others[:1], OBJ, 3)  # n=2, quota 1: 85/0.3 is ahead
    assert keeps(pt(80, 0.2), others, OBJ, 3)  # cheaper than all: first front


def test_one_objective_is_successive_halving():
    one = {"val/acc1": "max"}
    seen = [{"val/acc1": v} for v in (1, 2, 3, 4, 5)]
    # n = 6, quota = ceil(6 / 3) = 2: continue iff fewer than 2 recorded values are better
    assert keeps({"val/acc1": 4}, seen, one, 3) and keeps({"val/acc1": 6}, seen, one, 3)
    assert not keeps({"val/acc1": 3.9}, seen, one, 3)
    assert keeps({"val/acc1": 0}, [], one, 3)  # the first at a rung always continues
    assert keeps({"val/acc1": 2}, [{"val/acc1": 2}], one, 3)  # a tie is not behind


def trial(tid, config=None):
    return SimpleNamespace(trial_id=tid, config=config or {})


def result(it, acc, macs):
    return {"training_iteration": it, "val/acc1": acc, "cost/macs": macs}


def test_scheduler_decides_once_per_rung_and_spares():
    s = ParetoHalving(OBJ, max_t=9, grace_period=1, reduction_factor=2, spare=lambda c: c.get("paper", False))
    assert list(s.recorded) == [1, 2, 4, 8]
    assert s.on_trial_result(None, trial("a"), result(1, 90, 8)) == GO  # first at rung 1
    assert s.on_trial_result(None, trial("b"), result(1, 70, 0.3)) == GO  # cheaper: on the front
    assert s.on_trial_result(None, trial("c"), result(1, 60, 8)) == STOP  # dominated by a: behind quota 2
    assert s.on_trial_result(None, trial("d", {"paper": True}), result(1, 50, 9)) == GO  # spared
    assert "d" in s.recorded[1]  # ... but recorded
    assert s.on_trial_result(None, trial("a"), result(1, 90, 8)) == GO  # already decided at rung 1
    assert s.on_trial_result(None, trial("a"), result(3, 91, 8)) == GO  # rung 2, first there
    assert s.recorded[2] == {"a": pt(91, 8)} and s.stopped == 1
    assert s.on_trial_result(None, trial("e"), {"training_iteration": 1}) == GO  # no metric: nothing decided


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="reduction_factor"):
        ParetoHalving(OBJ, max_t=9, grace_period=1, reduction_factor=1)
