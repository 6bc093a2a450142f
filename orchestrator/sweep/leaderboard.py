"""Tune results -> a leaderboard DataFrame (one row per trial) and the best trial's checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
from ray.tune import ResultGrid

from orchestrator.sweep.search.space import PaperPoint, matching_point
from orchestrator.config.objectives import OVER_BUDGET


@dataclass
class TrialSummary:
    number: int
    trial_id: str
    outcome: str  # completed | early_stopped | failed | over_budget (its student exceeds sweep.budget: not trained)
    epochs: int
    best: dict  # the reported row with the best metric
    params: dict
    checkpoint_dir: str | None


def summarise(results: ResultGrid, metric: str, mode: str, epochs: int, sampled_keys: list[str]) -> list[TrialSummary]:
    from orchestrator.sweep.trial import trial_number

    summaries = []
    for result in results:
        frame = result.metrics_dataframe
        trial_id = str((result.metrics or {}).get("trial_id") or _id_from_path(result.path))
        number = trial_number(result.path or "", trial_id)
        params = {k: result.config.get(k) for k in sampled_keys if k in (result.config or {})}
        if frame is not None and OVER_BUDGET in frame and frame[OVER_BUDGET].fillna(0).any():
            summaries.append(TrialSummary(number, trial_id, "over_budget", 0, {}, params, None))  # not trained
            continue
        if frame is None or frame.empty or metric not in frame:
            summaries.append(TrialSummary(number, trial_id, "failed", 0, {}, {}, None))
            continue
        # On ties the latest row: the checkpoint Ray keeps (it ranks later checkpoints above equal earlier ones).
        latest_first = frame[metric][::-1]
        pick = latest_first.idxmax() if mode == "max" else latest_first.idxmin()
        best = frame.loc[pick].to_dict()
        done = int(frame["training_iteration"].max())
        own = result.config.get("train.epochs", epochs)  # its own epochs when the space samples them
        outcome = "failed" if result.error else ("completed" if done >= own else "early_stopped")
        summaries.append(
            TrialSummary(number, trial_id, outcome, done, best, params, _checkpoint_dir(result, best, metric, mode))
        )
    return summaries


def _id_from_path(path: str | None) -> str:
    """``.../run_trial_0ea0d466_4_...`` -> ``0ea0d466``."""
    parts = (path or "").rstrip("/").rsplit("/", 1)[-1].split("_")
    return parts[2] if len(parts) > 2 else "?"


def _checkpoint_dir(result, best_row: dict, metric: str, mode: str) -> str | None:
    """In-process trials report checkpoints to Tune; worker-group trials report Train's checkpoint_path."""
    candidates = [(m.get(metric), ckpt.path) for ckpt, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if candidates:
        _, path = (max if mode == "max" else min)(candidates, key=lambda c: c[0])
        return path
    path = best_row.get("checkpoint_path")
    return path if isinstance(path, str) and path else None


def to_frame(summaries: list[TrialSummary], metric: str, mode: str, points: Sequence[PaperPoint] = (),
             costs: Callable[[dict], dict[str, float]] | None = None) -> pd.DataFrame:
    """One row per trial, best first; ``points``: the paper-default points (marked in column ``paper_default``);
    ``costs``: a trial's sampled params -> its student's ``cost/*`` columns."""
    rows = []
    for s in summaries:
        point = matching_point(s.params, points) if s.params else None
        row = {
            "trial": s.number,
            "paper_default": point.method if point else "",
            "outcome": s.outcome,
            "epochs": s.epochs,
            metric: s.best.get(metric),
            "val/acc5": s.best.get("val/acc5"),
            "train/loss": s.best.get("train/loss"),
            "best_epoch": s.best.get("training_iteration"),
        }
        if costs is not None and s.params:
            row.update(costs(s.params))
        row.update(s.params)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(metric, ascending=(mode == "min"), na_position="last").reset_index(drop=True)
        frame.index = frame.index + 1
        frame.index.name = "rank"
    return frame


def best_summary(summaries: list[TrialSummary], metric: str, mode: str) -> TrialSummary | None:
    ok = [s for s in summaries if s.best.get(metric) is not None and s.checkpoint_dir]
    if not ok:
        return None
    return (max if mode == "max" else min)(ok, key=lambda s: s.best[metric])
