"""The confirmation stage: the best configs re-trained on fresh seeds, the winner chosen by mean
validation accuracy, test accuracy reported as mean ± sd with paired gains and their intervals.

Jobs are (config, seed) pairs run as a Ray Tune grid of Ray Train runs (:func:`orchestrator.sweep.trial.run_job`),
concurrent as resources allow, each an MLflow child run of the sweep's ``confirm`` stage run. The
student alone is trained on the same seeds with each candidate's optimiser settings, so every gain is
paired by seed and measures distillation, not tuning.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.sweep.leaderboard import TrialSummary
from orchestrator.sweep.search.space import PaperPoint, matching_point
from orchestrator.report.stats import PairedGain, mean_sd, paired_gain

ALONE = {"distill.method": "ce", "distill.ce.weight": 1.0}  # the student alone: cross-entropy only


@dataclass
class Candidate:
    """A config to measure on several seeds: sampled ``params`` applied to the sweep's config."""

    label: str  # "trial 6", "paper default kd", "student alone"
    params: dict[str, Any]
    role: str  # "tuned" | "paper" | "alone"
    trial: int | None = None
    search_value: float | None = None  # the search's metric for this config (on the search seeds)
    val: dict[int, float] = field(default_factory=dict)  # seed -> validation acc1 (final epoch)
    test: dict[int, float] = field(default_factory=dict)  # seed -> test acc1
    checkpoints: dict[int, str] = field(default_factory=dict)  # seed -> checkpoint folder
    alone: Candidate | None = None  # the student alone with this config's optimiser settings

    @property
    def display(self) -> str:
        """The label as printed; the student alone names the optimiser settings it shares with the configs
        it is paired to, e.g. ``student alone (lr 0.1188)``."""
        if self.role != "alone" or not self.params:
            return self.label
        return f"{self.label} (" + ", ".join(f"{k.removeprefix('train.').replace('_', ' ')} {fmt(v)}"
                                             for k, v in self.params.items()) + ")"

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.params, **ALONE} if self.role == "alone" else dict(self.params)

    def summary(self) -> dict:
        val, test = mean_sd(list(self.val.values())), mean_sd(list(self.test.values()))
        return {"label": self.label, "role": self.role, "trial": self.trial, "params": self.params,
                "seeds": sorted(self.test), "val_mean": val[0], "val_sd": val[1], "test_mean": test[0],
                "test_sd": test[1], "val": self.val, "test": self.test}


def optimiser_params(params: dict[str, Any]) -> dict[str, Any]:
    """The ``train.*`` and ``model.*`` values of a config (what the student alone shares with it: its
    optimiser settings and, where the search samples the student, the same architecture)."""
    return {k: v for k, v in params.items() if k.startswith(("train.", "model."))}


def candidates(summaries: Sequence[TrialSummary], points: Sequence[PaperPoint], top_k: int, metric: str,
               mode: str, baseline: bool) -> list[Candidate]:
    """The ``top_k`` best distinct configs of the search (completed trials first), the best paper-default
    trial if it is not among them, and (``baseline``) the student alone with the optimiser settings of the
    best-ranked one (linked to every candidate that shares them; if the chosen config does not, its own
    student alone is trained after the choice: :func:`alone_for`)."""
    scored = [s for s in summaries if s.best.get(metric) is not None]
    rank = sorted(scored, key=lambda s: (s.outcome != "completed", -s.best[metric] if mode == "max" else s.best[metric]))
    chosen: list[Candidate] = []
    for s in rank:
        if len(chosen) >= top_k:
            break
        if all(c.params != s.params for c in chosen):
            chosen.append(from_trial(s, points, metric))
    papers = [s for s in rank if matching_point(s.params, points)]
    if papers and all(c.params != papers[0].params for c in chosen):
        chosen.append(from_trial(papers[0], points, metric))
    if baseline and chosen:  # the student alone with the best-ranked config's settings serves those sharing them
        first = optimiser_params(chosen[0].params)
        chosen.append(alone_for([c for c in chosen if optimiser_params(c.params) == first]))
    return chosen


def alone_for(cands: Sequence[Candidate], label: str = "student alone") -> Candidate:
    """The student alone with the optimiser settings of ``cands`` (all share them); linked to each."""
    alone = Candidate(label, optimiser_params(cands[0].params), "alone")
    for c in cands:
        c.alone = alone
    return alone


def from_trial(s: TrialSummary, points: Sequence[PaperPoint], metric: str) -> Candidate:
    """Trial ``s`` as a candidate (labelled with its paper default, if it is one)."""
    point = matching_point(s.params, points)
    label = f"trial {s.number}" + (f" ({point.label})" if point else "")
    return Candidate(label, dict(s.params), "paper" if point else "tuned", s.number, s.best[metric])


def best_seed(cand: Candidate) -> int:
    """The seed whose run of ``cand`` scored best on validation (the student that is registered and exported)."""
    return max(cand.checkpoints, key=lambda s: cand.val[s])


def jobs(cands: Sequence[Candidate], seeds: Sequence[int], fixed: dict[str, Any]) -> list[dict]:
    """One job per (candidate, seed): what :func:`orchestrator.sweep.trial.run_job` trains. ``fixed``: the search
    space's constants, which every trial had besides its sampled values."""
    return [{"key": f"{i}-{seed}", "label": c.label, "overrides": {**fixed, **c.overrides}, "seed": int(seed)}
            for i, c in enumerate(cands) for seed in seeds]


class JobPrinter(tune.Callback):
    """One line per finished confirmation job."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        job, m = trial.config["job"], trial.last_result or {}
        s = int(time.perf_counter() - self.start)
        print(f"{s // 60:3d}m{s % 60:02d}s  confirm {self.done:>2}/{self.total}  {job['label']:<32} seed {job['seed']:<4} "
              f"val {100 * m.get('val/acc1', float('nan')):6.2f}%  test {100 * m.get('test/acc1', float('nan')):6.2f}%",
              flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"confirm {self.done:>2}/{self.total}  {trial.config['job']['label']} seed {trial.config['job']['seed']} "
              "FAILED (see its MLflow run's orchestrator.error tag)", flush=True)


def collect(results: tune.ResultGrid, cands: Sequence[Candidate]) -> list[str]:
    """Fill each candidate's per-seed val/test/checkpoint from the grid; returns the failed jobs' labels."""
    failed = []
    for result in results:
        job = result.config["job"]
        cand = cands[int(job["key"].split("-", 1)[0])]
        m = result.metrics or {}
        if result.error or "test/acc1" not in m:
            failed.append(f"{job['label']} seed {job['seed']}")
            continue
        cand.val[job["seed"]], cand.test[job["seed"]] = m["val/acc1"], m["test/acc1"]
        # A checkpoint Ray Train persisted (a worker group), or a finished job's final one read back after a
        # driver kill (orchestrator.sweep.confirm.finished_job), comes as checkpoint_path; otherwise Tune's own (in-process).
        path = m.get("checkpoint_path") or (result.checkpoint.path if result.checkpoint is not None else None)
        if path:
            cand.checkpoints[job["seed"]] = path
    return failed


@dataclass
class Verdict:
    """The stage's outcome: the chosen config and its gains (None where there is nothing to compare)."""

    chosen: Candidate
    cands: list[Candidate]
    seeds: list[int]
    confirmed: bool  # False: measured on the search's own seeds (top_k = 0)
    vs_alone: PairedGain | None
    vs_paper: PairedGain | None
    paper: Candidate | None

    def as_dict(self) -> dict:
        return {
            "confirmed": self.confirmed, "seeds": self.seeds, "chosen": self.chosen.label,
            "candidates": [c.summary() for c in self.cands],
            "chosen_alone": next((i for i, c in enumerate(self.cands) if c is self.chosen.alone), None),
            "gain_vs_alone": self.vs_alone.as_dict() if self.vs_alone else None,
            "gain_vs_paper_default": self.vs_paper.as_dict() if self.vs_paper else None,
            "paper_default": self.paper.label if self.paper else None,
        }


def decide(cands: Sequence[Candidate], seeds: Sequence[int], level: float, confirmed: bool) -> Verdict:
    """The winner by mean validation accuracy among the distilled candidates; its paired test gains."""
    measured = [c for c in cands if c.role != "alone" and c.val]
    if not measured:
        raise ValueError("no candidate config finished a confirmation run")
    chosen = max(measured, key=lambda c: mean_sd(list(c.val.values()))[0])
    papers = [c for c in measured if c.role == "paper"]
    paper = max(papers, key=lambda c: mean_sd(list(c.val.values()))[0]) if papers else None
    vs_alone = paired_gain(chosen.test, chosen.alone.test, level) if chosen.alone and chosen.alone.test else None
    vs_paper = paired_gain(chosen.test, paper.test, level) if paper is not None and paper is not chosen else None
    return Verdict(chosen, list(cands), list(seeds), confirmed, vs_alone, vs_paper, paper)


def table(verdict: Verdict, teacher_label: str, teacher_test: float) -> str:
    """The printed table: val and test mean ± sd over the seeds, paired test gain over the student alone."""
    seeds = ", ".join(map(str, verdict.seeds))
    how = (f"re-trained on fresh seeds [{seeds}] the search never used" if verdict.confirmed
           else f"UNCONFIRMED: measured on the search's own seeds [{seeds}] (sweep.confirm.top_k=0)")
    lines = [f"== Result: {how}; chosen by mean validation accuracy ==",
             f"  {'':<44} {'val acc1 %':>14} {'test acc1 %':>14}   test gain over its student alone [95% CI]",
             f"  {'teacher ' + teacher_label:<44} {'':>14} {100 * teacher_test:>14.2f}   (one trained teacher)"]
    for c in verdict.cands:
        v = mean_sd(list(c.val.values())) if c.val else (float("nan"), float("nan"))
        t = mean_sd(list(c.test.values())) if c.test else (float("nan"), float("nan"))
        mark = "*" if c is verdict.chosen else " "
        gain = paired_gain(c.test, c.alone.test).text() if c.alone and c.alone.test and c.test else ""
        lines.append(f"{mark} {c.display:<44} {_pm(v):>14} {_pm(t):>14}   {gain}")
    lines.append("  (* chosen; mean ± sd over seeds)")
    return "\n".join(lines)


def conclusion(verdict: Verdict) -> str:
    """One plain sentence per comparison: is the chosen config's gain real?"""
    c, out = verdict.chosen, []
    if verdict.vs_alone is not None:
        g = verdict.vs_alone
        if g.significant and g.mean > 0:
            out.append(f"The chosen config ({c.label}) beats the {c.alone.display} by {g.text()}.")
        elif g.mean > 0:
            out.append(f"The chosen config ({c.label}) is {g.text()} over the {c.alone.display}: "
                       "the gain is NOT significant on these seeds.")
        else:
            out.append(f"The chosen config ({c.label}) does NOT beat the {c.alone.display} ({g.text()}).")
    if verdict.vs_paper is not None:
        out.append(f"Over the best paper default ({verdict.paper.label}): {verdict.vs_paper.text()}.")
    elif verdict.paper is c:
        out.append("The chosen config is the paper default itself: tuning found nothing better on these seeds.")
    if not verdict.confirmed:
        out.append("Selected and measured on the same seeds: expect a smaller gain on fresh seeds.")
    return "\n".join(out)


def plot(verdict: Verdict, path: Path) -> Path:
    """Per-seed test accuracy of every candidate (dots) with mean ± sd (bars), as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.6 * len(verdict.cands) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for y, c in enumerate(verdict.cands):
        values = [100 * v for v in c.test.values()]
        if not values:
            continue
        mean, sd = mean_sd(values)
        colour = "tab:red" if c is verdict.chosen else ("tab:grey" if c.role == "alone" else "tab:blue")
        ax.errorbar(mean, y, xerr=sd, fmt="o", color=colour, capsize=4)
        ax.scatter(values, [y] * len(values), s=12, color=colour, alpha=0.5)
    ax.set_yticks(range(len(verdict.cands)), [c.display for c in verdict.cands])
    ax.invert_yaxis()
    ax.set_xlabel("test acc1 (%): seeds (dots), mean ± sd (bars)")
    seeds = ", ".join(map(str, verdict.seeds))
    ax.set_title((f"confirmed on fresh seeds [{seeds}]" if verdict.confirmed else f"UNCONFIRMED: search seeds [{seeds}]")
                 + "; chosen in red, student alone in grey", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _pm(pair: tuple[float, float]) -> str:
    mean, sd = pair
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def fmt(value: Any) -> str:
    """A config value as printed: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
