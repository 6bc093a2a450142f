"""Early stopping for a search with several objectives: asynchronous successive halving on Pareto rank.

ASHA ranks the trials that reach a rung on accuracy alone and stops those below the top 1/eta. When trials
train students of different sizes, that stops every small student whose accuracy trails the large ones',
however cheap it is: the very points an accuracy-vs-cost front needs. :class:`ParetoHalving` keeps ASHA's
rungs (grace period x eta^k epochs) and its asynchronous promotion, and replaces the ranking by
non-dominated sorting over all the objectives (accuracy and costs, :func:`orchestrator.sweep.pareto.pareto_front`):

- the points recorded at a rung, with the arriving trial's, are sorted into fronts F1 (no point dominates
  them), F2 (only F1 points do), ...;
- the trial continues if fewer than ceil(n / eta) of the n points lie in fronts strictly better than its own,
  so whole fronts are kept until at least 1/eta of the rung is, and a trial on the rung's first front (no
  other trial is at least as accurate *and* at least as cheap) is never stopped;
- with one objective the fronts are the distinct values in order, and this is ASHA's rule (up to how the
  1/eta quantile is rounded).

A trial's costs are constant (known before it trains), so at a rung it is compared on accuracy only with
trials that are at most as costly: a small student is stopped only when enough students no larger than it are
more accurate. As ASHA (MO-ASHA, Schmucker et al. 2021, ranks the same way), it stops fewer trials when the
front is wide. ``spare`` trials (the paper defaults) are never stopped; their results still count at the rungs.
Public Tune API only (:class:`ray.tune.schedulers.FIFOScheduler`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from orchestrator.sweep.pareto import pareto_front


def rungs(grace_period: int, max_t: int, reduction_factor: int) -> list[int]:
    """ASHA's milestones below ``max_t``: grace_period x reduction_factor^k, ascending."""
    out, t = [], grace_period
    while t < max_t:
        out.append(t)
        t *= reduction_factor
    return out


def fronts_ahead(point: Mapping, others: list[Mapping], objectives: Mapping[str, str]) -> int:
    """How many of ``others`` lie in non-dominated fronts strictly better than ``point``'s (the points
    themselves: ``objective -> value``)."""
    pool = [*others, point]
    left = list(range(len(pool)))
    ahead = 0
    while left:
        front = [left[i] for i in pareto_front([pool[j] for j in left], objectives)]
        if len(pool) - 1 in front:
            return ahead
        ahead += len(front)
        left = [j for j in left if j not in front]
    return ahead


def keeps(point: Mapping, others: list[Mapping], objectives: Mapping[str, str], reduction_factor: int) -> bool:
    """Whether a trial at ``point`` continues past a rung where ``others`` were recorded before it."""
    if not others:
        return True
    quota = math.ceil((len(others) + 1) / reduction_factor)
    return fronts_ahead(point, others, objectives) < quota


class ParetoHalving(FIFOScheduler):
    """Asynchronous successive halving on the non-dominated rank of ``objectives`` (metric -> "max"/"min"),
    see the module's docstring. ``spare(config)``: trials never stopped (their results still count)."""

    def __init__(self, objectives: Mapping[str, str], *, max_t: int, grace_period: int, reduction_factor: int,
                 spare: Callable[[dict], bool] | None = None, time_attr: str = "training_iteration"):
        super().__init__()
        if grace_period < 1 or reduction_factor < 2 or max_t < grace_period:
            raise ValueError(f"grace_period >= 1, reduction_factor >= 2, max_t >= grace_period; got "
                             f"{grace_period}, {reduction_factor}, {max_t}")
        self.objectives = dict(objectives)
        self.reduction_factor, self.time_attr, self.spare = reduction_factor, time_attr, spare
        self.recorded: dict[int, dict[str, dict]] = {t: {} for t in rungs(grace_period, max_t, reduction_factor)}
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # its objectives are its own (Tune's single metric, if any, is not used)

    def decide(self, trial_id: str, result: Mapping) -> str:
        """CONTINUE or STOP for ``result`` of ``trial_id``, recorded at the highest rung it reached first."""
        t = result.get(self.time_attr)
        point = {k: result.get(k) for k in self.objectives}
        if t is None or any(not isinstance(v, (int, float)) or math.isnan(v) for v in point.values()):
            return TrialScheduler.CONTINUE
        for milestone in sorted(self.recorded, reverse=True):
            seen = self.recorded[milestone]
            if t < milestone:
                continue
            if trial_id in seen:
                break
            go_on = keeps(point, list(seen.values()), self.objectives, self.reduction_factor)
            seen[trial_id] = point
            return TrialScheduler.CONTINUE if go_on else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = self.decide(trial.trial_id, result)
        if decision == TrialScheduler.STOP and self.spare is not None and self.spare(trial.config):
            return TrialScheduler.CONTINUE
        self.stopped += decision == TrialScheduler.STOP
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result:
            self.decide(trial.trial_id, result)  # a finished trial's last result counts at its rung

    def debug_string(self) -> str:
        return (f"Pareto successive halving on {self.objectives}: {self.stopped} stopped; rungs "
                + ", ".join(f"{t}: {len(seen)}" for t, seen in self.recorded.items()))
