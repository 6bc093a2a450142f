"""The report's PNG plots, drawn on plain :class:`matplotlib.figure.Figure` objects (Agg canvas):
no pyplot state or backend is touched."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from orchestrator.report.runs import metric_history


_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float = 7, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def slug(text: str) -> str:
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
    numeric = pd.api.types.is_numeric_dtype(board[key]) if key in board else False
    fig = _figure(width=7 if numeric or key not in data else max(7.0, 0.35 * data[key].nunique()))
    ax = fig.add_subplot()
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
        category_ticks(ax, cats)
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


def category_ticks(ax, cats: list[str]) -> None:
    """One x tick per category; slanted when there are more than 6 (the zoo's ~22 method names)."""
    ax.set_xticks(range(len(cats)), cats, rotation=45 if len(cats) > 6 else 0, ha="right" if len(cats) > 6 else "center")
    ax.set_xlim(-0.6, len(cats) - 0.4)


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
        loss = metric_history(client, row["run_id"], "train/loss")
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
    """One panel per sweep: (label, {parameter: importance}, note); a long note wraps over several lines."""
    titles = [textwrap.fill(f"{label}: {note}", 90) for label, _, note in results]
    fig = _figure(8, 1.2 + sum(2.6 + 0.15 * title.count("\n") for title in titles))
    axes = np.atleast_1d(fig.subplots(len(results), 1, squeeze=False)[:, 0])
    for ax, title, (_, imp, _) in zip(axes, titles, results):
        if imp:
            keys = list(imp)[::-1]
            ax.barh(keys, [imp[k] for k in keys], color=_colour(0))
            ax.set_xlim(0, 1)
            ax.set_xlabel("importance (normalised)")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "parameter importance not available", ha="center", va="center",
                    transform=ax.transAxes, fontsize=11)
        ax.set_title(title, fontsize=9, loc="left")
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
    keys = [("test/acc1_mean", "chosen config (test, mean over seeds)"),
            ("student_alone/test_acc1", "student alone (test, mean over seeds)"),
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


def plot_front(points, references: list[dict], seeds: list[int], path: Path, title: str,
               budget_ms: float | None = None) -> Path:
    """Test accuracy (%) vs ONNX Runtime latency (ms/image at batch 1, log x) of the confirmed front
    (:class:`orchestrator.sweep.confirm.front.FrontPoint`): each point distilled (filled, mean ± sd over ``seeds``) and its
    architecture alone (hollow, same latency), joined by a line (the gain); the confirmed front as a step line;
    ``references`` (``label``, ``test_acc1``, ``cost/latency_ms``): the first, the teacher (or the ensemble),
    a red star with its accuracy dashed, the others (an ensemble's teachers) grey triangles; a latency budget
    ``budget_ms`` as a dotted vertical line."""
    fig = _figure(8, 5)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for i, p in enumerate(points):
        x, (mean, sd) = p.cost["cost/latency_ms"], p.test
        ax.errorbar([x], [100 * mean], yerr=[100 * sd], fmt="o", color=_colour(0), capsize=4, zorder=3,
                    label="distilled (mean ± sd)" if i == 0 else None)
        if p.alone_test:
            a_mean, a_sd = p.alone_test
            ax.errorbar([x], [100 * a_mean], yerr=[100 * a_sd], fmt="o", mfc="white", color="tab:grey", capsize=4,
                        zorder=2, label="same architecture alone" if i == 0 else None)
            ax.plot([x, x], [100 * a_mean, 100 * mean], color="tab:grey", lw=0.8, ls=":", zorder=1)
        ax.annotate(f"{i + 1}. {p.arch}", (x, 100 * mean), textcoords="offset points", xytext=(6, 4), fontsize=7)
    front = sorted((p.cost["cost/latency_ms"], 100 * p.test[0]) for p in points if p.on_front)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color=_colour(0), alpha=0.6, label="confirmed front")
    for i, ref in enumerate(references):
        if ref.get("cost/latency_ms") is not None:
            ax.scatter([ref["cost/latency_ms"]], [100 * ref["test_acc1"]], marker="*" if i == 0 else "^",
                       s=180 if i == 0 else 60, color="tab:red" if i == 0 else "tab:grey", edgecolors="black",
                       zorder=4, label=ref["label"])
    ax.axhline(100 * references[0]["test_acc1"], color="tab:red", ls="--", lw=0.8, alpha=0.6)
    if budget_ms is not None:
        ax.axvline(budget_ms, color="black", ls=":", lw=1, label=f"budget {budget_ms:g} ms/image")
    ax.set(xlabel="latency (ms/image, ONNX Runtime, batch 1; log scale)", ylabel="test acc1 (%)",
           title=f"{title}\nconfirmed on fresh seeds [{', '.join(map(str, seeds))}]")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
