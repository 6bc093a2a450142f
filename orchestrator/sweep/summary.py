"""The sweep's headline numbers: as MLflow metrics, as tags of the registered version, and printed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from orchestrator.sweep.confirm import outcome
from orchestrator.infra import tracking
from orchestrator.sweep.confirm.outcome import fmt
from orchestrator.config.schema import Config
from orchestrator.report.stats import mean_sd


def headline_metrics(summary: dict, verdict: outcome.Verdict) -> dict[str, float]:
    """The headline numbers as MLflow metrics (means, sds, gains and interval bounds)."""
    out = {k: v for k, v in summary.items() if k.startswith(("test/", "teacher/", "student_alone/", "cost/"))
           and isinstance(v, (int, float))}
    for c in verdict.cands:
        name = "chosen" if c is verdict.chosen else re.sub(r"[^0-9A-Za-z_.-]+", "_", c.label).strip("_")
        if c.test:
            out[f"confirm/{name}/test_acc1_mean"], out[f"confirm/{name}/test_acc1_sd"] = mean_sd(list(c.test.values()))
    for key, gain in (("gain_vs_alone", verdict.vs_alone), ("gain_vs_paper_default", verdict.vs_paper)):
        if gain is not None:
            out[f"confirm/{key}"] = gain.mean
            if gain.low is not None:
                out[f"confirm/{key}_low"], out[f"confirm/{key}_high"] = gain.low, gain.high
    return out


def headline_tags(verdict: outcome.Verdict, level: float) -> dict[str, str]:
    """Tags of the sweep's parent run naming what its ``confirm/*`` metrics are about (read by
    ``python -m orchestrator.compare``): the chosen config, its trial and params, the seeds, the level."""
    chosen = verdict.chosen
    return {"confirm.chosen": chosen.label, "confirm.chosen_trial": "" if chosen.trial is None else str(chosen.trial),
            "confirm.chosen_params": json.dumps(chosen.params, default=str), "confirm.confirmed": str(verdict.confirmed).lower(),
            "confirm.seeds": json.dumps(verdict.seeds), "confirm.level": f"{level:g}",
            "confirm.alone": chosen.alone.display if chosen.alone else "",
            "confirm.paper_default": verdict.paper.label if verdict.paper else ""}


def version_tags(summary: dict, verdict: outcome.Verdict) -> dict[str, str]:
    """Tags of the registered model version: the chosen config's mean, sd, gains and intervals, and its
    student's cost (``cost/params``, ``cost/macs``, ``cost/latency_ms``, ...)."""
    tags = {"confirmed": str(verdict.confirmed).lower(), "config": verdict.chosen.label,
            "seeds": json.dumps(verdict.seeds), "test_acc1_mean": f"{summary['test/acc1_mean']:.6f}",
            "test_acc1_sd": f"{summary['test/acc1_sd']:.6f}", "registered_seed": str(summary["registered_seed"])}
    tags.update({key: f"{value:.6g}" for key, value in summary.items() if key.startswith("cost/")})
    for key, gain in (("gain_vs_alone", verdict.vs_alone), ("gain_vs_paper_default", verdict.vs_paper)):
        if gain is not None:
            tags[key] = f"{gain.mean:.6f}"
            tags[f"{key}_interval"] = "n/a" if gain.low is None else f"[{gain.low:.6f}, {gain.high:.6f}]"
            tags[f"{key}_significant"] = str(gain.significant).lower()
    return tags


def print_summary(cfg: Config, chosen: outcome.Candidate, seed: int, version, parent_id: str, exp_dir: Path,
                  uri: str, start: float) -> None:
    """The chosen config, where its runs and registered model are, and the sweep's wall time."""
    params = "  ".join(f"{k}={fmt(v)}" for k, v in chosen.params.items())
    print(f"\nChosen config: {chosen.label}\n  {params}")
    print(f"\nMLflow: experiment '{cfg.tracking.experiment or cfg.name}', parent run {parent_id}")
    if version:
        print(f"  registered model: {cfg.tracking.registered_model} version {version} "
              f"(the chosen config's student of seed {seed}, its best on validation)")
    print(f"  browse: {tracking.ui_command(uri)}")
    print(f"Results: {exp_dir}  (leaderboard.csv, summary.json, confirm.png, best_student.pt)")
    s = int(time.perf_counter() - start)
    print(f"Sweep time: {s // 60}m{s % 60:02d}s")
