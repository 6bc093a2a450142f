"""write_report: the tables, the plots and a self-contained HTML page, optionally logged to a run."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from orchestrator.report.confirmed import confirmed_result, describe
from orchestrator.report.plots import plot_history, plot_importance, plot_learning_curves, plot_param, plot_sweeps, slug
from orchestrator.report.runs import ReportError, client_for, resolve_sweeps
from orchestrator.report.tables import build_leaderboard, param_importances, sweep_table


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
    results: dict[str, list[str]] = field(default_factory=dict)  # sweep label -> its result as printed lines

    @property
    def files(self) -> list[Path]:
        return [self.csv, self.sweeps_csv, self.html, *self.plots.values()]


def _html(title: str, board: pd.DataFrame, table: pd.DataFrame, plots: dict[str, Path], notes: list[str],
          results: dict[str, list[str]]) -> str:
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
        "<h2>Results</h2>", *[f"<pre>{html.escape(chr(10).join(lines))}</pre>" for lines in results.values()],
        "<h2>Sweeps</h2>", table.to_html(**fmt),
        "<h2>Leaderboard</h2><p>One row per trial (child run) of the search, sorted by its best validation "
        "score on the search seeds: single trials, not the confirmed result (see Sweeps).</p>", board.to_html(**fmt),
        "<h2>Plots</h2>", *[img(p) for p in plots.values()],
    ]
    if notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{html.escape(n)}</li>" for n in notes], "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


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
    client = client_for(client_or_uri)
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
        plots[f"param:{key}"] = plot_param(board, key, metric, labels, out / f"param_{slug(key)}.png")
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

    rows, by_label = table.set_index("sweep"), {s.label: s for s in sweeps}
    results = {label: describe(label, confirmed_result(by_label[label]), rows.loc[label, "best_search_trial"],
                               rows.loc[label, f"best {metric}"], metric) for label in table["sweep"]}
    title = "Distillation sweeps: " + ", ".join(labels)
    html_path = out / "leaderboard.html"
    html_path.write_text(_html(title, board, table, plots, notes, results))
    report = Report(out, board, table, csv, html_path, sweeps_csv, plots, notes, results)
    if log_to:
        for path in report.files:
            client.log_artifact(log_to, str(path), "report")
    return report
