"""The sweeps a report covers, read from MLflow: a parent run per sweep and its trial child runs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.infra.tracking import KIND, PARENT


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


def client_for(client_or_uri: MlflowClient | str) -> MlflowClient:
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


def metric_history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """Metric history as a Series indexed by step (the last value logged at each step)."""
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    series = pd.Series({m.step: m.value for m in points}, dtype=float)
    return series.sort_index()


def parse_values(values: pd.Series) -> pd.Series:
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
