"""The confirmed accuracy-vs-cost front: which searched configs to confirm, and what the confirmation shows.

With a cost objective (``sweep.objectives``, e.g. ``val/acc1: max, cost/latency_ms: min``) the candidates are
the Pareto-optimal completed trials over (accuracy, cost), capped to ``sweep.confirm.top_k`` points spread
along the cost (:mod:`orchestrator.sweep.pareto`); with a budget (``sweep.budget``) the one most accurate completed
trial within it. Each candidate is paired with the same architecture (and optimiser settings) trained alone
(:func:`orchestrator.sweep.confirm.outcome.alone_for`), and both are re-trained on the fresh confirmation seeds by the
confirm stage. A :class:`FrontPoint` is one confirmed candidate with its cost and paired gain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.config.budget import Budget
from orchestrator.sweep.confirm.outcome import Candidate, alone_for, fmt, from_trial
from orchestrator.config.cost_metrics import METRICS
from orchestrator.sweep.leaderboard import TrialSummary
from orchestrator.sweep.pareto import pareto_front, spread
from orchestrator.sweep.search.space import PaperPoint
from orchestrator.report.stats import PairedGain, mean_sd, paired_gain

COSTS = tuple(METRICS.values())  # cost/params, cost/macs, cost/latency_ms, cost/latency_ms_b64


class NoStudentFits(ValueError):
    """No completed trial's student is within the budget."""


@dataclass(frozen=True)
class FrontSpec:
    """What the front is drawn over: ``accuracy`` (mode ``accuracy_mode``) against ``cost`` (minimised);
    with ``budget``, the one best config within it instead of a front."""

    accuracy: str
    accuracy_mode: str
    cost: str
    budget: Budget | None = None

    @property
    def objectives(self) -> dict[str, str]:
        return {self.accuracy: self.accuracy_mode, self.cost: "min"}


def spec_of(objectives: Mapping[str, str] | None, budget: Budget | None, metric: str, mode: str) -> FrontSpec | None:
    """The front a sweep asks for: ``objectives`` (metric -> max/min) with a ``cost/*`` metric, or a ``budget``;
    None for a sweep with neither (it confirms its top-k configs by accuracy alone). The accuracy objective is
    the first non-cost one (else ``metric``/``mode``); the cost is the budget's metric, else the first cost
    objective."""
    objectives = dict(objectives or {})
    costs = [k for k in objectives if k in COSTS]
    if budget is None and not costs:
        return None
    accuracy = next(((k, m) for k, m in objectives.items() if k not in COSTS), (metric, mode))
    return FrontSpec(accuracy[0], accuracy[1], budget.metric if budget else costs[0], budget)


def select(summaries: Sequence[TrialSummary], points: Sequence[PaperPoint], spec: FrontSpec, top_k: int,
           cost_of: Callable[[dict], Mapping[str, float]], baseline: bool = True) -> list[Candidate]:
    """The configs to confirm, cheapest first, then their students alone (``baseline``: each config's
    architecture and optimiser settings, :func:`orchestrator.sweep.confirm.outcome.optimiser_params`, trained with CE).
    Completed trials count first: trials stopped early (scored on fewer epochs) only when no completed trial
    qualifies (none at all; or, with a budget, none within it). A config searched twice counts once, at its
    best. ``cost_of``: a trial's sampled params -> its student's ``cost/*`` metrics. Raises NoStudentFits when
    no trial within the budget was scored, ValueError when no trial was scored at all."""
    sign = 1 if spec.accuracy_mode == "max" else -1

    def rank(s: TrialSummary) -> tuple:  # completed first, then the better score
        return s.outcome == "completed", sign * s.best[spec.accuracy]

    best: dict[str, TrialSummary] = {}
    for s in summaries:
        if s.outcome not in ("completed", "early_stopped") or s.best.get(spec.accuracy) is None:
            continue
        key = repr(sorted(s.params.items()))
        if key not in best or rank(s) > rank(best[key]):
            best[key] = s
    done = sorted(best.values(), key=lambda s: s.number)
    if not done:
        raise ValueError(f"no trial reported {spec.accuracy}: nothing to confirm")
    rows = [{spec.accuracy: s.best[spec.accuracy], **cost_of(s.params)} for s in done]
    tiers = [[i for i, s in enumerate(done) if s.outcome == outcome] for outcome in ("completed", "early_stopped")]
    if spec.budget is not None:
        fits = next((f for f in ([i for i in tier if spec.budget.fits(rows[i])] for tier in tiers) if f), None)
        if fits is None:
            cheapest = min(range(len(rows)), key=lambda i: rows[i][spec.budget.metric])
            value = rows[cheapest][spec.budget.metric]
            raise NoStudentFits(f"no student fits {spec.budget}: the cheapest trial that was scored, trial "
                                f"{done[cheapest].number}, has {spec.budget.metric} = {value:g}")
        picked = [max(fits, key=lambda i: (sign * rows[i][spec.accuracy], -rows[i][spec.cost], -i))]
    else:  # a tie in both objectives (e.g. two configs of one student scoring alike) is confirmed once: the earlier
        pool = next(tier for tier in tiers if tier)
        front = [pool[i] for i in pareto_front([rows[i] for i in pool], spec.objectives)]
        distinct = [i for n, i in enumerate(front)
                    if all(rows[j][spec.accuracy] != rows[i][spec.accuracy] or rows[j][spec.cost] != rows[i][spec.cost]
                           for j in front[:n])]
        picked = spread(rows, distinct, spec.cost, top_k)
    chosen = [from_trial(done[i], points, spec.accuracy) for i in picked]
    if not baseline:
        return chosen
    # Points differ in cost, so in architecture: each has its own student alone.
    return chosen + [alone_for([c], label=f"{c.label.split(' (')[0]} alone") for c in chosen]


@dataclass
class FrontPoint:
    """A confirmed config: its student's architecture and ``cost/*`` metrics, and its gain over that
    architecture trained alone on the same seeds (None without the alone runs)."""

    cand: Candidate
    arch: str
    cost: dict[str, float]
    gain: PairedGain | None
    on_front: bool = True  # not dominated by another point on (confirmed test accuracy, cost)

    @property
    def test(self) -> tuple[float, float]:
        return mean_sd(list(self.cand.test.values()))

    @property
    def alone_test(self) -> tuple[float, float] | None:
        alone = self.cand.alone
        return mean_sd(list(alone.test.values())) if alone is not None and alone.test else None

    def summary(self, extra: Mapping[str, Any] | None = None) -> dict:
        """The point as ``summary.json`` keeps it (``extra``: e.g. its ONNX file and registered version)."""
        alone = self.alone_test
        return {"label": self.cand.label, "trial": self.cand.trial, "arch": self.arch, "params": self.cand.params,
                **self.cost, "seeds": sorted(self.cand.test), "test_mean": self.test[0], "test_sd": self.test[1],
                "test": self.cand.test, "alone_label": self.cand.alone.label if self.cand.alone else None,
                "alone_test_mean": alone[0] if alone else None, "alone_test_sd": alone[1] if alone else None,
                "alone_test": self.cand.alone.test if self.cand.alone else None,
                "gain_vs_alone": self.gain.as_dict() if self.gain else None, "on_confirmed_front": self.on_front,
                **dict(extra or {})}

    def metrics(self) -> dict[str, float]:
        """Numbers of the point for MLflow: test mean/sd, the alone's, the gain with its bounds, cost/*."""
        out = {"test_acc1_mean": self.test[0], "test_acc1_sd": self.test[1], **self.cost}
        if self.alone_test:
            out["alone_test_acc1_mean"], out["alone_test_acc1_sd"] = self.alone_test
        if self.gain is not None:
            out["gain_vs_alone"] = self.gain.mean
            if self.gain.low is not None:
                out["gain_vs_alone_low"], out["gain_vs_alone_high"] = self.gain.low, self.gain.high
        return out

    def tags(self) -> dict[str, str]:
        """Strings of the point for MLflow run and model-version tags: architecture, config, the numbers."""
        tags = {"arch": self.arch, "config": self.cand.label, "knobs": knobs_text(self.cand.params),
                "on_confirmed_front": str(self.on_front).lower(),
                **{k: f"{v:.6g}" for k, v in self.metrics().items()}}
        if self.gain is not None:
            low, high = self.gain.low, self.gain.high
            tags["gain_vs_alone_interval"] = "n/a" if low is None else f"[{low:.6f}, {high:.6f}]"
            tags["gain_vs_alone_significant"] = str(self.gain.significant).lower()
        return tags


def knobs_text(params: Mapping[str, Any]) -> str:
    """A config's sampled values other than the student's architecture, e.g. ``method=kd lr=0.12``."""
    return "  ".join(f"{k.rsplit('.', 1)[-1] if k.startswith('train.') else k.removeprefix('distill.')}={fmt(v)}"
                     for k, v in params.items() if not k.startswith("model.student"))


def confirmed_points(cands: Sequence[Candidate], spec: FrontSpec, cost_of: Callable[[dict], Mapping[str, Any]],
                     level: float) -> list[FrontPoint]:
    """The distilled candidates that finished confirmation runs, cheapest first, with their cost record
    (``cost_of``: params -> a record with ``arch`` and the ``cost/*`` metrics) and paired gains; a point
    another point beats in confirmed test accuracy at no more cost is marked ``on_front=False``."""
    points = []
    for c in cands:
        if c.role == "alone" or not c.test:
            continue
        record = cost_of(c.params)
        gain = paired_gain(c.test, c.alone.test, level) if c.alone is not None and c.alone.test else None
        points.append(FrontPoint(c, str(record["arch"]), {k: float(record[k]) for k in COSTS if k in record}, gain))
    points.sort(key=lambda p: (p.cost.get(spec.cost, 0.0), p.arch))
    rows = [{"test": p.test[0], "cost": p.cost.get(spec.cost, 0.0)} for p in points]
    front = set(pareto_front(rows, {"test": "max", "cost": "min"})) if rows else set()
    for i, p in enumerate(points):
        p.on_front = i in front
    return points


def table(points: Sequence[FrontPoint], spec: FrontSpec, seeds: Sequence[int],
          references: Sequence[Mapping[str, Any]]) -> str:
    """The printed front: per point its architecture, params, MACs, latency, test accuracy mean ± sd, the
    same architecture alone and the paired gain with its interval; ``references`` (the teacher, or the
    ensemble and each of its teachers: ``label``, ``test_acc1`` and the ``cost/*`` metrics) as reference rows."""
    what = (f"the most accurate student within {spec.budget}" if spec.budget else
            f"the accuracy-vs-cost front ({spec.accuracy} {spec.accuracy_mode}, {spec.cost} min)")
    lines = [f"== {what}: re-trained on fresh seeds [{', '.join(map(str, seeds))}], each paired with the same "
             "architecture trained alone ==",
             f"  {'architecture':<40} {'params':>10} {'M MACs':>8} {'ms/img':>8}  {'test acc1 %':>14}  "
             f"{'alone %':>14}   gain over alone [95% CI]"]
    lines += [_row(" ", r["label"], r, f"{100 * r['test_acc1']:.2f}", "", "(reference)") for r in references]
    for i, p in enumerate(points, 1):
        alone = _pm(p.alone_test) if p.alone_test else ""
        lines.append(_row("*" if p.on_front else " ", f"{i}. {p.arch}", p.cost, _pm(p.test), alone,
                          p.gain.text() if p.gain else ""))
        lines.append(f"      {p.cand.label}: {knobs_text(p.cand.params)}")
    lines.append("  (mean ± sd over seeds; ms/img: ONNX Runtime at batch 1; * on the confirmed front: no other point "
                 "is more accurate at no more cost)")
    return "\n".join(lines)


def _row(mark: str, name: str, cost: Mapping[str, Any], test: str, alone: str, gain: str) -> str:
    params, macs, ms = (cost.get(k) for k in ("cost/params", "cost/macs", "cost/latency_ms"))
    return (f"{mark} {name:<40} {'' if params is None else f'{int(params):,}':>10} "
            f"{'' if macs is None else f'{macs / 1e6:.3f}':>8} {'' if ms is None else f'{ms:.4f}':>8}  "
            f"{test:>14}  {alone:>14}   {gain}")


def _pm(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"


def budget_line(point: FrontPoint, budget: Budget) -> str:
    """Budget mode's answer in one sentence: the chosen student, its cost and its confirmed gain."""
    cost = point.cost
    gain = point.gain.text() if point.gain else "not measured (sweep.baseline=false)"
    return (f"Within {budget}: {point.arch} ({point.cand.label}; {knobs_text(point.cand.params)}), "
            f"{int(cost['cost/params']):,} params, {cost['cost/macs'] / 1e6:.3f} M MACs, {cost['cost/latency_ms']:.4f} "
            f"ms/image; test acc1 {_pm(point.test)}%; over the same architecture alone: {gain}.")
