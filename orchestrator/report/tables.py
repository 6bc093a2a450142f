"""The report's tables: one row per trial (leaderboard), one per sweep, and parameter importances."""

from __future__ import annotations

import math
import warnings

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator.report.confirmed import GAINS, confirmed_result
from orchestrator.report.runs import SAMPLED, Sweep, metric_history, parse_values, runs_frame
from orchestrator.infra.tracking import OUTCOME


def build_leaderboard(
    client: MlflowClient, sweeps: list[Sweep], metric: str = "val/acc1", mode: str = "max"
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """One row per trial, best ``metric`` (over its history) first; and each run's ``metric`` history."""
    rows, histories, params = [], {}, []
    for sweep in sweeps:
        frame = runs_frame(sweep.children)
        for run, (_, rec) in zip(sweep.children, frame.iterrows()):
            hist = metric_history(client, run.info.run_id, metric)
            histories[run.info.run_id] = hist
            best = (hist.max() if mode == "max" else hist.min()) if len(hist) else math.nan
            number = rec.get("tags.trial_number")
            row = {
                "sweep": sweep.label,
                "trial": int(number) if isinstance(number, str) and number.isdigit() else pd.NA,
                "run_name": run.info.run_name,
                "run_id": run.info.run_id,
                "outcome": run.data.tags.get(OUTCOME) or run.info.status.lower(),
                "epochs": len(hist),
                f"best {metric}": best,
                "best_epoch": (hist.idxmax() if mode == "max" else hist.idxmin()) if len(hist) else pd.NA,
                f"last {metric}": hist.iloc[-1] if len(hist) else math.nan,
            }
            for key in ("val/acc5", "val/loss", "train/loss"):
                if key != metric:
                    row[f"last {key}"] = run.data.metrics.get(key, math.nan)
            row["test/acc1"] = run.data.metrics.get("test/acc1", math.nan)
            sampled = {k[len(SAMPLED):]: v for k, v in run.data.params.items() if k.startswith(SAMPLED)}
            params.extend(k for k in sampled if k not in params)
            row.update(sampled)
            row["_start"] = run.info.start_time or 0
            rows.append(row)
    frame = pd.DataFrame(rows)
    for key in params:
        frame[key] = parse_values(frame[key])
    score = f"best {metric}"
    frame = frame.sort_values([score, "_start"], ascending=[mode == "min", True], na_position="last")
    frame = frame.drop(columns="_start").reset_index(drop=True)
    frame["trial"] = frame["trial"].astype("Int64")
    frame["best_epoch"] = frame["best_epoch"].astype("Int64")
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    frame.attrs["params"] = params
    frame.attrs["metric"] = metric
    frame.attrs["mode"] = mode
    return frame, histories


def sweep_table(sweeps: list[Sweep], board: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """One row per sweep: trial counts, best and median ``metric`` of the search, its best single trial (one
    trial on the search seeds), and the confirmed result from the parent run: the chosen config, its test
    mean ± sd over the confirmation seeds, its paired gains with their intervals (NaN where not logged)."""
    score, rows = f"best {metric}", []
    for s in sweeps:
        trials = board[board["sweep"] == s.label]
        scored = trials.dropna(subset=[score])
        top = scored.iloc[0] if len(scored) else None  # board is sorted best first
        outcomes = trials["outcome"].value_counts()
        result = confirmed_result(s)
        row = {
            "sweep": s.label,
            "search_space": (s.parent.data.tags.get("search_space") if s.parent else None) or "",
            "trials": len(trials),
            "completed": int(outcomes.get("completed", 0)),
            "early_stopped": int(outcomes.get("early_stopped", 0)),
            "failed": int(outcomes.get("failed", 0)),
            score: top[score] if top is not None else math.nan,
            f"median {metric}": scored[score].median() if len(scored) else math.nan,
            "best_search_trial": top["run_name"] if top is not None else "",
            "chosen": result.chosen if result else "",
            "confirmed": pd.NA if result is None or result.confirmed is None else result.confirmed,
            "seeds": len(result.seeds) if result else 0,
            "test/acc1_mean": result.test_mean if result else math.nan,
            "test/acc1_sd": result.test_sd if result else math.nan,
        }
        for key in GAINS:
            gain = result.gains.get(key) if result else None
            row[key] = gain.mean if gain else math.nan
            row[f"{key}_low"] = gain.low if gain and gain.low is not None else math.nan
            row[f"{key}_high"] = gain.high if gain and gain.high is not None else math.nan
        pm = s.parent.data.metrics if s.parent else {}
        row["student_alone/test_acc1"] = pm.get("student_alone/test_acc1", math.nan)
        row["teacher/test_acc1"] = pm.get("teacher/test_acc1", math.nan)
        row["parent_run_id"] = s.parent_id
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(score, ascending=(mode == "min"), na_position="last")
    frame = frame.reset_index(drop=True)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    return frame


def _distribution(values: pd.Series):
    """Optuna distribution inferred from one parameter's values (None if constant)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    present = values.dropna()
    if present.nunique() < 2:
        return None
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(present.min()), int(present.max()))
    if pd.api.types.is_float_dtype(values):
        lo, hi = float(present.min()), float(present.max())
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10)
    return CategoricalDistribution(sorted(present.astype(str).unique()))


def _cast(value, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return str(value)
    return int(value) if isinstance(dist, IntDistribution) else float(value)


def param_importances(trials: pd.DataFrame, params: list[str], metric: str, mode: str) -> tuple[dict, str]:
    """Optuna's parameter importances on a study rebuilt from finished trials; ({} , why) if impossible.

    PED-ANOVA (Optuna's default, handles conditional parameters) with a target quantile that keeps at
    least two trials on top; fANOVA if that fails.
    """
    import optuna

    score = f"best {metric}"
    done = trials.dropna(subset=[score])
    if len(done) < 2:
        return {}, f"{len(done)} finished trial(s): importance needs at least 2"
    dists = {k: _distribution(done[k]) for k in params if k in done}
    constant = [k for k, d in dists.items() if d is None]
    dists = {k: d for k, d in dists.items() if d is not None}
    if not dists:
        return {}, "no searched parameter varies across the finished trials"
    if done[score].nunique() < 2:
        return {}, f"every finished trial has the same {metric}: no parameter explains a difference"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        for _, row in done.iterrows():
            values = {k: _cast(row[k], dists[k]) for k in dists if not pd.isna(row[k])}
            study.add_trial(optuna.trial.create_trial(
                params=values, distributions={k: dists[k] for k in values}, value=float(row[score])))
        quantile = min(0.5, max(0.1, 2 / len(done)))
        note = f"PED-ANOVA on {len(done)} finished trials"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
                result = optuna.importance.get_param_importances(study, evaluator=evaluator)
            except Exception:  # noqa: BLE001 - fall back to fANOVA (non-conditional parameters only)
                evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                result = optuna.importance.get_param_importances(study, evaluator=evaluator)
                note = f"fANOVA on {len(done)} finished trials"
    except Exception as exc:  # noqa: BLE001 - a report must not fail on a statistics corner case
        return {}, f"importance could not be computed ({type(exc).__name__}: {exc})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    if len(done) < 10:
        note += " (few trials: indicative only)"
    if constant:
        note += f"; a single value among the trials that drew it, left out: {', '.join(constant)}"
    return {k: float(v) for k, v in result.items()}, note
