"""The early-stopping rule: ASHA stops what falls behind at a rung, except a paper-default trial, which trains to
the last epoch and is ranked on its final value (a slow starter is not a bad finisher under a cosine schedule)."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.sweep.search.space import PaperPoint
from orchestrator.sweep.search.search_stage import PaperDefaultsFinish

CRD_KD = PaperPoint("crd_kd", {"distill.method": "crd_kd", "distill.crd.nce_t": 0.07})


def _scheduler() -> PaperDefaultsFinish:
    return PaperDefaultsFinish([CRD_KD], time_attr="training_iteration", metric="val/acc1", mode="max", max_t=6,
                               grace_period=1, reduction_factor=2, brackets=1)


def _run(scheduler, trials, accuracy, iteration=1) -> dict[str, str]:
    decisions = {}
    for t in trials:
        decisions[t.trial_id] = scheduler.on_trial_result(
            None, t, {"training_iteration": iteration, "val/acc1": accuracy[t.trial_id]})
    return decisions


def test_a_paper_default_behind_at_a_rung_continues_where_a_tuned_trial_is_stopped():
    scheduler = _scheduler()
    leaders = [SimpleNamespace(trial_id=f"good{i}", config={"distill.method": "kd", "train.lr": 0.1 + i})
               for i in range(3)]
    paper = SimpleNamespace(trial_id="paper", config={"distill.method": "crd_kd", "distill.crd.nce_t": 0.07})
    tuned = SimpleNamespace(trial_id="tuned", config={"distill.method": "crd_kd", "distill.crd.nce_t": 0.1})
    for t in [*leaders, paper, tuned]:
        scheduler.on_trial_add(None, t)
    _run(scheduler, leaders, {"good0": 0.90, "good1": 0.91, "good2": 0.92})
    decisions = _run(scheduler, [paper, tuned], {"paper": 0.50, "tuned": 0.50})
    assert decisions == {"paper": scheduler.CONTINUE, "tuned": scheduler.STOP}


def test_without_paper_points_it_is_plain_asha():
    scheduler = PaperDefaultsFinish([], time_attr="training_iteration", metric="val/acc1", mode="max", max_t=6,
                                    grace_period=1, reduction_factor=2, brackets=1)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"distill.crd.nce_t": 0.07}) for i in range(4)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    decisions = _run(scheduler, trials, {"t0": 0.9, "t1": 0.91, "t2": 0.92, "t3": 0.5})
    assert decisions["t3"] == scheduler.STOP  # the same config as CRD+KD's paper default, but no point given
