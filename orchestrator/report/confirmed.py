"""A sweep's confirmed result as its parent run holds it: the chosen config, its test mean ± sd over the
confirmation seeds and its paired gains with their intervals.

The numbers are the parent's ``confirm/*`` and ``test/*`` metrics and the tags naming what they are about
(``confirm.chosen``, ``confirm.chosen_params``, ``confirm.seeds``, ...), all written by the sweep
(:mod:`orchestrator.sweep.summary`) from the same verdict as its ``summary.json``. A sweep logged before those
tags existed gets its chosen trial from the trial run tagged ``orchestrator.best``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from orchestrator.report.runs import SAMPLED, Sweep
from orchestrator.report.stats import PairedGain

GAINS = {"gain_vs_alone": "the student alone", "gain_vs_paper_default": "the best paper default"}


@dataclass(frozen=True)
class Confirmed:
    """The chosen config of one sweep and its numbers (accuracies as fractions)."""

    chosen: str  # "trial 6", "trial 1 (paper default kd)"
    trial: int | None
    params: dict[str, object]
    confirmed: bool | None  # False: measured on the search's own seeds (sweep.confirm.top_k=0); None: not logged
    seeds: list[int]
    test_mean: float
    test_sd: float
    gains: dict[str, PairedGain] = field(default_factory=dict)  # "gain_vs_alone", "gain_vs_paper_default"
    alone: str = "the student alone"  # the student alone the gain is paired with, e.g. "student alone (lr 0.1)"
    paper_default: str | None = None
    alone_test_mean: float | None = None
    teacher_test: float | None = None


def _gain(metrics: dict[str, float], key: str, n: int, level: float) -> PairedGain | None:
    if f"confirm/{key}" not in metrics:
        return None
    low, high = metrics.get(f"confirm/{key}_low"), metrics.get(f"confirm/{key}_high")
    return PairedGain(metrics[f"confirm/{key}"], low, high, n, level)


def _chosen_trial(sweep: Sweep) -> tuple[int | None, dict[str, object]]:
    """(trial number, sampled params) of the trial run tagged ``orchestrator.best`` (older sweeps)."""
    for run in sweep.children:
        if run.data.tags.get("orchestrator.best") == "true":
            number = run.data.tags.get("trial_number")
            params = {k[len(SAMPLED):]: v for k, v in run.data.params.items() if k.startswith(SAMPLED)}
            return (int(number) if number and number.isdigit() else None), params
    return None, {}


def confirmed_result(sweep: Sweep) -> Confirmed | None:
    """The confirmed result of ``sweep``, or None when its parent run holds no ``confirm/chosen/*`` metrics
    (a sweep that did not finish, or one logged before the confirmation stage existed)."""
    if sweep.parent is None:
        return None
    metrics, tags = sweep.parent.data.metrics, sweep.parent.data.tags
    if "confirm/chosen/test_acc1_mean" not in metrics:
        return None
    seeds = json.loads(tags.get("confirm.seeds", "[]"))
    level = float(tags.get("confirm.level", 0.95))
    if "confirm.chosen" in tags:
        trial = int(tags["confirm.chosen_trial"]) if tags.get("confirm.chosen_trial", "").isdigit() else None
        chosen, params = tags["confirm.chosen"], json.loads(tags.get("confirm.chosen_params", "{}"))
    else:
        trial, params = _chosen_trial(sweep)
        chosen = f"trial {trial}" if trial is not None else "the chosen config"
    gains = {k: g for k in GAINS if (g := _gain(metrics, k, len(seeds), level)) is not None}
    confirmed = {"true": True, "false": False}.get(tags.get("confirm.confirmed", ""))
    return Confirmed(
        chosen, trial, params, confirmed, seeds, metrics["confirm/chosen/test_acc1_mean"],
        metrics["confirm/chosen/test_acc1_sd"], gains, tags.get("confirm.alone", "the student alone"),
        tags.get("confirm.paper_default") or None, metrics.get("student_alone/test_acc1"),
        metrics.get("teacher/test_acc1"),
    )


def describe(label: str, result: Confirmed | None, best_trial: str, best_value: float, metric: str) -> list[str]:
    """The printed lines of one sweep: the confirmed result (or why there is none), then its best single
    search trial labelled as what it is."""
    lines = [f"== {label}: result =="]
    if result is None:
        lines.append("  no confirmed result in its parent run (no confirm/* metrics: the sweep did not finish, or "
                     "ran before the confirmation stage existed)")
    else:
        seeds = ", ".join(map(str, result.seeds)) or "?"
        how = {True: f"re-trained on fresh seeds [{seeds}] the search never used",
               False: f"UNCONFIRMED: measured on the search's own seeds [{seeds}] (sweep.confirm.top_k=0)",
               None: f"seeds [{seeds}]"}[result.confirmed]
        lines.append(f"  chosen config: {result.chosen} ({how}; chosen by mean validation accuracy)")
        if result.params:
            lines.append("    " + "  ".join(f"{k}={v}" for k, v in result.params.items()))
        lines.append(f"  test acc1: {100 * result.test_mean:.2f} ± {100 * result.test_sd:.2f} % "
                     f"(mean ± sd over {len(result.seeds) or '?'} seeds)")
        for key, gain in result.gains.items():
            other = result.alone if key == "gain_vs_alone" else f"the best paper default ({result.paper_default})"
            lines.append(f"  gain over {other}: {gain.text()} ({100 * gain.level:g}% paired t-interval)")
        if result.paper_default == result.chosen:
            lines.append("  the chosen config is the paper default itself: tuning found nothing better on these seeds")
        if result.alone_test_mean is not None:
            lines.append(f"  student alone: {100 * result.alone_test_mean:.2f} % (mean over the same seeds)")
        if result.teacher_test is not None:
            lines.append(f"  teacher: {100 * result.teacher_test:.2f} % (one trained teacher)")
    if best_trial:
        lines.append(f"  best single search trial: {best_trial}, best {metric} {best_value:.4g} (one trial on the "
                     "search seeds, before confirmation; not the result)")
    return lines
