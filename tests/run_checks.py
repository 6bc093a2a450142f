"""Checks on what a sweep or pipeline left in MLflow: every run closed, with its outcome, after its artifacts."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient


def last_artifact_ms(run) -> int:
    """When the newest file under the run's (local) artifact folder was written there, in ms (0 if none).
    The inode change time is the copy's own time (a copy keeps its source's mtime)."""
    root = Path(unquote(urlparse(run.info.artifact_uri).path))
    times = [max(p.stat().st_mtime, p.stat().st_ctime) for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return int(max(times, default=0) * 1000)


def assert_every_run_closed(uri: str) -> None:
    """Every run in every experiment of ``uri`` is closed with an ``orchestrator.outcome`` that matches its
    status, and ended no earlier than its last artifact was written."""
    client = MlflowClient(uri)
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            name, tags = run.info.run_name, run.data.tags
            assert run.info.status != "RUNNING", name
            assert "orchestrator.outcome" in tags, (name, run.info.status)
            expected = {"completed": "FINISHED", "early_stopped": "FINISHED", "failed": "FAILED",
                        "interrupted": "KILLED"}[tags["orchestrator.outcome"]]
            assert run.info.status == expected, (name, run.info.status, tags["orchestrator.outcome"])
            # end_time is whole ms (truncated), the file time exact: 1 ms of slack
            assert run.info.end_time + 1 >= last_artifact_ms(run), (name, run.info.end_time, last_artifact_ms(run))
