"""Sweep report from MLflow: leaderboard (CSV, HTML), PNG plots, cross-sweep comparison.

Reads what the sweep logs (DESIGN.md, MLflow layout): a parent run per sweep
(tag ``orchestrator.kind=sweep``) and one child run per trial (tag
``orchestrator.kind=trial``, ``mlflow.parentRunId``, ``trial_number``,
``orchestrator.outcome``; params ``sampled.<key>``; per-epoch metrics with
``step=epoch``). Works against any tracking URI (SQLite, ``mlflow server``).

Used by ``python -m orchestrator.compare`` and at the end of every sweep::

    report = write_report(client, [parent_run_id], out_dir, log_to=parent_run_id)

Plots are drawn on plain :class:`matplotlib.figure.Figure` objects (Agg
canvas), so no pyplot state or backend is touched.
"""

from __future__ import annotations

import base64
import html
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking import KIND, OUTCOME, PARENT

SAMPLED = "sampled."
PARENT_METRICS = ("test/acc1", "teacher/test_acc1", "student_alone/test_acc1")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(ValueError):
    """Bad input: unknown experiment or run, or nothing this tool logged there."""


@dataclass
class Sweep:
    """One sweep = one parent run and its trial child runs."""

    label: str
    experiment_id: str
    experiment: str
    parent_id: str
    parent: Run | None
    children: list[Run]

    @property
    def parent_name(self) -> str:
        return self.parent.info.run_name if self.parent else self.parent_id[:8]


@dataclass
class Report:
    """What :func:`write_report` wrote (all paths absolute) and the tables behind it."""

    out_dir: Path
    leaderboard: pd.DataFrame  # one row per trial, best first (index = rank from 1)
    sweeps: pd.DataFrame  # one row per sweep, best first
    csv: Path
    html: Path
    sweeps_csv: Path
    plots: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [self.csv, self.sweeps_csv, self.html, *self.plots.values()]


# ---------------------------------------------------------------------- reading


def _client(client_or_uri: MlflowClient | str) -> MlflowClient:
    return client_or_uri if isinstance(client_or_uri, MlflowClient) else MlflowClient(tracking_uri=client_or_uri)


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as a DataFrame with the columns of ``mlflow.search_runs`` (``params.x``, ``metrics.x``, ``tags.x``)."""
    rows = []
    for r in runs:
        row = {
            "run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "run_name": r.info.run_name,
            "status": r.info.status, "start_time": r.info.start_time, "end_time": r.info.end_time,
        }
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _trial_filter() -> str:
    return f"tags.`{KIND}` = 'trial'"


def _experiment_sweeps(client: MlflowClient, name: str) -> list[Sweep]:
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        known = [e.name for e in client.search_experiments(max_results=20)]
        hint = f" (experiments there: {', '.join(known)})" if known else " (the store has no experiments)"
        raise ReportError(f"no MLflow experiment named '{name}'{hint}")
    children = _search(client, [exp.experiment_id], _trial_filter())
    if not children:
        raise ReportError(
            f"experiment '{name}' has no trial runs (runs tagged {KIND}=trial); is it a sweep of this tool?"
        )
    parents = {r.info.run_id: r for r in _search(client, [exp.experiment_id], f"tags.`{KIND}` = 'sweep'")}
    groups: dict[str, list[Run]] = {}
    for run in children:
        groups.setdefault(run.data.tags.get(PARENT, ""), []).append(run)
    return [
        Sweep(name, exp.experiment_id, name, pid, parents.get(pid), runs)
        for pid, runs in sorted(groups.items(), key=lambda g: min(r.info.start_time or 0 for r in g[1]))
    ]


def _run_sweep(client: MlflowClient, run_id: str) -> Sweep:
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ReportError(f"no MLflow run with id '{run_id}'") from exc
    kind = run.data.tags.get(KIND)
    if kind == "trial" and run.data.tags.get(PARENT):
        raise ReportError(
            f"run '{run_id}' is a trial; pass its sweep's parent run id {run.data.tags[PARENT]} instead"
        )
    children = _search(client, [run.info.experiment_id], f"{_trial_filter()} and tags.`{PARENT}` = '{run_id}'")
    if not children:
        raise ReportError(
            f"run '{run_id}' ({run.info.run_name}, {KIND}={kind}) has no trial child runs; it is not a sweep's parent run"
        )
    exp = client.get_experiment(run.info.experiment_id)
    return Sweep(exp.name, exp.experiment_id, exp.name, run_id, run, children)


def resolve_sweeps(client: MlflowClient, sources: Sequence[str], kind: str = "auto") -> list[Sweep]:
    """Sweeps named by experiment names or parent run ids (``kind``: ``auto``, ``experiment`` or ``run``).

    ``auto`` takes a 32-hex string for a run id when such a run exists, anything else for an experiment.
    Raises :class:`ReportError` with one clear message for unknown names/ids.
    """
    if not sources:
        raise ReportError("nothing to report: give experiment names or parent run ids")
    sweeps: list[Sweep] = []
    for source in sources:
        as_run = kind == "run" or (kind == "auto" and _RUN_ID.match(source) and _run_exists(client, source))
        sweeps.extend([_run_sweep(client, source)] if as_run else _experiment_sweeps(client, source))
    unique = {s.parent_id: s for s in sweeps}  # the same sweep named twice counts once
    sweeps = list(unique.values())
    _label(sweeps)
    return sweeps


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def _label(sweeps: list[Sweep]) -> None:
    """Experiment name; ``experiment/parent-run-name`` where several sweeps share an experiment."""
    counts = pd.Series([s.experiment for s in sweeps]).value_counts()
    for s in sweeps:
        s.label = s.experiment if counts[s.experiment] == 1 else f"{s.experiment}/{s.parent_name}"
    labels = pd.Series([s.label for s in sweeps]).value_counts()
    for s in sweeps:
        if labels[s.label] > 1:
            s.label = f"{s.label}@{s.parent_id[:6]}"


def _history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """Metric history as a Series indexed by step (the last value logged at each step)."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    series = pd.Series({m.step: m.value for m in points}, dtype=float)
    return series.sort_index()


# ---------------------------------------------------------------------- tables


def _parse(values: pd.Series) -> pd.Series:
    """Params are strings in MLflow: ints, floats, or categories (kept as strings)."""
    present = values.dropna()
    if present.empty:
        return values
    if present.map(lambda v: re.fullmatch(r"[-+]?\d+", str(v)) is not None).all():
        return pd.to_numeric(values).astype("Int64")
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all() and np.isfinite(numbers.to_numpy(dtype=float)).all():
        return pd.to_numeric(values, errors="coerce")
    return values.astype(object)


def build_leaderboard(
    client: MlflowClient, sweeps: list[Sweep], metric: str = "val/acc1", mode: str = "max"
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """One row per trial, best ``metric`` (over its history) first; and each run's ``metric`` history."""
    rows, histories, params = [], {}, []
    for sweep in sweeps:
        frame = runs_frame(sweep.children)
        for run, (_, rec) in zip(sweep.children, frame.iterrows()):
            hist = _history(client, run.info.run_id, metric)
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
        frame[key] = _parse(frame[key])
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
    """One row per sweep: trial counts, best and median ``metric``, test accuracies from the parent run."""
    score, rows = f"best {metric}", []
    for s in sweeps:
        trials = board[board["sweep"] == s.label]
        scored = trials.dropna(subset=[score])
        top = scored.iloc[0] if len(scored) else None  # board is sorted best first
        pm = s.parent.data.metrics if s.parent else {}
        outcomes = trials["outcome"].value_counts()
        row = {
            "sweep": s.label,
            "search_space": (s.parent.data.tags.get("search_space") if s.parent else None) or "",
            "trials": len(trials),
            "completed": int(outcomes.get("completed", 0)),
            "early_stopped": int(outcomes.get("early_stopped", 0)),
            "failed": int(outcomes.get("failed", 0)),
            score: top[score] if top is not None else math.nan,
            f"median {metric}": scored[score].median() if len(scored) else math.nan,
            "best_trial": top["run_name"] if top is not None else "",
            "test/acc1": pm.get("test/acc1", top["test/acc1"] if top is not None else math.nan),
            "teacher/test_acc1": pm.get("teacher/test_acc1", math.nan),
            "student_alone/test_acc1": pm.get("student_alone/test_acc1", math.nan),
            "parent_run_id": s.parent_id,
        }
        row["gain_vs_student_alone"] = row["test/acc1"] - row["student_alone/test_acc1"]
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(score, ascending=(mode == "min"), na_position="last")
    frame = frame.reset_index(drop=True)
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="rank")
    return frame


# ---------------------------------------------------------------------- importance


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
        note += f"; constant, left out: {', '.join(constant)}"
    return {k: float(v) for k, v in result.items()}, note


# ---------------------------------------------------------------------- plots

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float = 7, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def _sweep_colour(labels: list[str], label: str) -> str:
    """One colour per sweep, the same in every plot (order of the sweeps as given)."""
    return _colour(labels.index(label)) if label in labels else _colour(0)


def _markers(ax, x, y, colour, outcome, label=None) -> None:
    """Filled: completed; hollow: stopped early (ASHA) or still running."""
    outcome = np.asarray(outcome)
    full = outcome == "completed"
    ax.scatter(np.asarray(x)[full], np.asarray(y)[full], color=colour, s=36, label=label, zorder=3)
    ax.scatter(np.asarray(x)[~full], np.asarray(y)[~full], facecolors="none", edgecolors=colour, s=36,
               label=None if full.any() else label, zorder=3)


def plot_param(board: pd.DataFrame, key: str, metric: str, labels: list[str], path: Path) -> Path:
    score = f"best {metric}"
    data = board.dropna(subset=[score, key]) if key in board else board.iloc[0:0]
    fig = _figure()
    ax = fig.add_subplot()
    numeric = pd.api.types.is_numeric_dtype(board[key]) if key in board else False
    rng = np.random.default_rng(0)
    if numeric:
        values = data[key].astype(float)
        if len(values) and values.min() > 0 and values.max() / values.min() >= 10:
            ax.set_xscale("log")
        for i, label in enumerate(labels):
            part = data[data["sweep"] == label]
            if len(part):
                _markers(ax, part[key].astype(float), part[score], _colour(i), part["outcome"], label)
    else:
        cats = sorted(data[key].astype(str).unique())
        for j, cat in enumerate(cats):
            vals = data[data[key].astype(str) == cat][score]
            if len(vals):
                ax.hlines(vals.median(), j - 0.3, j + 0.3, color="black", lw=1.5, zorder=2)
        for i, label in enumerate(labels):
            part = data[data["sweep"] == label]
            if len(part):
                xs = [cats.index(str(v)) + rng.uniform(-0.15, 0.15) for v in part[key]]
                _markers(ax, xs, part[score], _colour(i), part["outcome"], label)
        ax.set_xticks(range(len(cats)), cats)
        ax.set_xlim(-0.6, len(cats) - 0.4)
    ax.set_xlabel(key)
    ax.set_ylabel(score)
    ax.set_title(f"{score} against {key}" + ("" if numeric else "  (bar: median)"))
    ax.grid(alpha=0.3)
    if len(labels) > 1:
        ax.legend(fontsize=8)
    if data.empty:
        ax.text(0.5, 0.5, "no finished trial sampled this parameter", ha="center", transform=ax.transAxes)
    ax.annotate("filled: completed, hollow: stopped early", (0.99, 0.01), xycoords="axes fraction",
                ha="right", va="bottom", fontsize=7, color="gray")
    return _save(fig, path)


def plot_learning_curves(client: MlflowClient, board: pd.DataFrame, histories: dict[str, pd.Series], metric: str,
                         top: int, path: Path) -> Path:
    score = f"best {metric}"
    best = board.dropna(subset=[score]).head(top)
    many = board["sweep"].nunique() > 1
    fig = _figure(11, 4.5)
    ax_val, ax_loss = fig.subplots(1, 2)
    for i, (_, row) in enumerate(best.iterrows()):
        label = f"{row['sweep'] + ' ' if many else ''}{row['run_name']} ({row[score]:.4f})"
        hist = histories.get(row["run_id"], pd.Series(dtype=float))
        ax_val.plot(hist.index, hist.values, marker="o", ms=3, color=_colour(i), label=label)
        loss = _history(client, row["run_id"], "train/loss")
        ax_loss.plot(loss.index, loss.values, marker="o", ms=3, color=_colour(i), label=label)
    ax_val.set(xlabel="epoch", ylabel=metric, title=f"{metric}, top {len(best)} trial(s)")
    ax_loss.set(xlabel="epoch", ylabel="train/loss", title="train/loss")
    for ax in (ax_val, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(best):
        ax_val.legend(fontsize=8)
    else:
        ax_val.text(0.5, 0.5, "no trial reported an epoch", ha="center", transform=ax_val.transAxes)
    return _save(fig, path)


def plot_history(board: pd.DataFrame, labels: list[str], metric: str, mode: str, path: Path) -> Path:
    score = f"best {metric}"
    fig = _figure()
    ax = fig.add_subplot()
    for i, label in enumerate(labels):
        part = board[board["sweep"] == label].copy()
        order = part["trial"].astype("Float64").fillna(np.inf)
        part = part.assign(_o=order.to_numpy(dtype=float)).sort_values("_o")
        x = np.arange(len(part))
        if not part["trial"].isna().any():
            x = part["trial"].astype(int).to_numpy()
        y = part[score].to_numpy(dtype=float)
        ok = ~np.isnan(y)
        _markers(ax, x[ok], y[ok], _colour(i), part["outcome"].to_numpy()[ok], label)
        running = pd.Series(y).cummax() if mode == "max" else pd.Series(y).cummin()
        ax.step(x, running.to_numpy(), where="post", color=_colour(i), alpha=0.7,
                label=f"best so far ({label})" if len(labels) > 1 else "best so far")
    ax.set(xlabel="trial number", ylabel=score, title=f"Optimisation history ({score} per trial)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importance(results: list[tuple[str, dict, str]], path: Path) -> Path:
    fig = _figure(8, 1.2 + 2.6 * len(results))
    axes = np.atleast_1d(fig.subplots(len(results), 1, squeeze=False)[:, 0])
    for ax, (label, imp, note) in zip(axes, results):
        if imp:
            keys = list(imp)[::-1]
            ax.barh(keys, [imp[k] for k in keys], color=_colour(0))
            ax.set_xlim(0, 1)
            ax.set_xlabel("importance (normalised)")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "parameter importance not available", ha="center", va="center",
                    transform=ax.transAxes, fontsize=11)
        ax.set_title(f"{label}: {note}", fontsize=9, loc="left")
    fig.suptitle("Parameter importance (Optuna)")
    return _save(fig, path)


def plot_sweeps(board: pd.DataFrame, table: pd.DataFrame, metric: str, mode: str, order: list[str], path: Path) -> Path:
    score = f"best {metric}"
    labels = list(table["sweep"])  # best sweep first
    fig = _figure(11, 4.8)
    ax_box, ax_bar = fig.subplots(1, 2)
    data = [board[(board["sweep"] == s)][score].dropna().to_numpy() for s in labels]
    ax_box.boxplot([d if len(d) else [np.nan] for d in data], tick_labels=labels, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        colour = _sweep_colour(order, labels[i])
        ax_box.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(d)), d, color=colour, s=20, alpha=0.8, zorder=3)
        if len(d):
            top = d.max() if mode == "max" else d.min()
            ax_box.scatter([i + 1], [top], marker="*", s=140, color=colour, edgecolors="black", zorder=4)
    ax_box.set(ylabel=score, title=f"{score} per trial (star: best)")
    ax_box.grid(alpha=0.3, axis="y")
    keys = [("test/acc1", "best student (test)"), ("student_alone/test_acc1", "student alone (test)"),
            ("teacher/test_acc1", "teacher (test)")]
    width = 0.8 / len(keys)
    x = np.arange(len(labels))
    for j, (key, name) in enumerate(keys):
        vals = table[key].to_numpy(dtype=float)
        bars = ax_bar.bar(x + (j - 1) * width, np.nan_to_num(vals), width, label=name, color=_colour(j + 2))
        for bar, v in zip(bars, vals):
            if not np.isnan(v):
                ax_bar.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                                fontsize=7)
    ax_bar.set_xticks(x, labels)
    finite = table[[k for k, _ in keys]].to_numpy(dtype=float)
    finite = finite[~np.isnan(finite)]
    if finite.size:
        ax_bar.set_ylim(max(0.0, finite.min() - 0.1), min(1.05, finite.max() + 0.05))
    ax_bar.set(ylabel="test accuracy", title="Test accuracy per sweep (from each sweep's parent run)")
    ax_bar.legend(fontsize=8, loc="lower right")
    ax_bar.grid(alpha=0.3, axis="y")
    for ax in (ax_box, ax_bar):
        for tick in ax.get_xticklabels():
            tick.set_rotation(15 if len(labels) > 2 else 0)
    return _save(fig, path)


# ---------------------------------------------------------------------- html


def _html(title: str, board: pd.DataFrame, table: pd.DataFrame, plots: dict[str, Path], notes: list[str]) -> str:
    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">' \
               f"<figcaption>{html.escape(path.name)}</figcaption></figure>"

    fmt = {"float_format": lambda v: f"{v:.4g}", "na_rep": "", "border": 0, "classes": "tbl"}
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222} .tbl{border-collapse:collapse;font-size:13px}"
        " .tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
        " .tbl tbody tr:first-child{background:#eef6ee} img{max-width:100%} figure{margin:1em 0}"
        " figcaption{color:#777;font-size:12px}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Sweeps</h2>", table.to_html(**fmt),
        "<h2>Leaderboard</h2><p>One row per trial (child run), sorted by its best validation score; "
        "the test set is used for the best trial only.</p>", board.to_html(**fmt),
        "<h2>Plots</h2>", *[img(p) for p in plots.values()],
    ]
    if notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{html.escape(n)}</li>" for n in notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- entry point


def write_report(
    client_or_uri: MlflowClient | str,
    sources: Sequence[str],
    out_dir: str | Path,
    *,
    kind: str = "auto",
    metric: str = "val/acc1",
    mode: str = "max",
    top: int = 5,
    log_to: str | None = None,
) -> Report:
    """Write the report of the sweeps named by ``sources`` (experiment names or parent run ids) to ``out_dir``.

    Files: ``leaderboard.csv``, ``sweeps.csv``, ``leaderboard.html`` (self-contained: tables and
    plots), ``param_<key>.png`` per searched parameter, ``learning_curves.png``,
    ``optimisation_history.png``, ``param_importance.png`` and, with several sweeps, ``sweeps.png``.
    ``log_to``: a run id whose artifacts (under ``report/``) receive all of them.
    Raises :class:`ReportError` for unknown experiments/runs.
    """
    if mode not in ("max", "min"):
        raise ReportError(f"mode must be 'max' or 'min', got '{mode}'")
    client = _client(client_or_uri)
    sweeps = resolve_sweeps(client, list(sources), kind)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    board, histories = build_leaderboard(client, sweeps, metric, mode)
    params = board.attrs["params"]
    labels = [s.label for s in sweeps]
    table = sweep_table(sweeps, board, metric, mode)
    notes: list[str] = []
    if board[f"best {metric}"].isna().all():
        notes.append(f"no trial logged {metric}: check the metric name and the trials' orchestrator.error tags")

    csv, sweeps_csv = out / "leaderboard.csv", out / "sweeps.csv"
    board.to_csv(csv)
    table.to_csv(sweeps_csv)

    plots: dict[str, Path] = {}
    for key in params:
        plots[f"param:{key}"] = plot_param(board, key, metric, labels, out / f"param_{_slug(key)}.png")
    if not params:
        notes.append("no sampled.* params on the trial runs: nothing was searched, no per-parameter plots")
    plots["learning_curves"] = plot_learning_curves(client, board, histories, metric, top, out / "learning_curves.png")
    plots["optimisation_history"] = plot_history(board, labels, metric, mode, out / "optimisation_history.png")
    importances = []
    for s in sweeps:
        trials = board[board["sweep"] == s.label]
        present = [k for k in params if trials[k].notna().any()]
        imp, note = param_importances(trials, present, metric, mode)
        importances.append((s.label, imp, note))
        if not imp:
            notes.append(f"{s.label}: {note}")
    plots["param_importance"] = plot_importance(importances, out / "param_importance.png")
    if len(sweeps) > 1:
        plots["sweeps"] = plot_sweeps(board, table, metric, mode, labels, out / "sweeps.png")

    title = "Distillation sweeps: " + ", ".join(labels)
    html_path = out / "leaderboard.html"
    html_path.write_text(_html(title, board, table, plots, notes))
    report = Report(out, board, table, csv, html_path, sweeps_csv, plots, notes)
    if log_to:
        for path in report.files:
            client.log_artifact(log_to, str(path), "report")
    return report
