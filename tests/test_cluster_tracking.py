"""A real two-node Ray cluster on loopback refuses a tracking store on the driver's disk before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_sweep import ray_cluster, tiny_args

REFUSAL = "start an MLflow tracking server the nodes can reach"


def _cli(module: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_two_node_cluster_refuses_a_sqlite_tracking_uri_before_any_trial(isolated_cache, tmp_path):
    """One node (`ray start --head` alone) takes SQLite; with a second node the sweep, its --dry-run and the ensemble
    pipeline exit 2 naming the fix, and leave no runs folder and no MLflow run."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_AIR_NEW_OUTPUT": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with ray_cluster(env) as (address, add_node):
        single = _cli("orchestrator.sweep", ["--dry-run", *tiny_args(tmp_path, "--address", address)], tmp_path, env)
        assert single.returncode == 0, single.stderr[-3000:]  # one node: its disk is the driver's

        add_node()
        for module, args in [
            ("orchestrator.sweep", ["--dry-run", *tiny_args(tmp_path, "--address", address)]),
            ("orchestrator.sweep", tiny_args(tmp_path, "--address", address)),
            ("pipelines.ensemble", ["--name", "ens", "--tracking-uri", uri, "--output-dir", str(tmp_path / "out"),
                                    "--address", address, "data.dataset=digits", "model.student=tiny_student",
                                    "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]"]),
        ]:
            done = _cli(module, args, tmp_path, env)
            assert done.returncode == 2, (module, args, done.stdout[-2000:], done.stderr[-3000:])
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and REFUSAL in errors[0] and uri in errors[0], done.stderr[-3000:]
            assert "--tracking-uri http://" in errors[0] and "1 node(s)" in errors[0]
    assert not (tmp_path / "runs").exists()  # no sweep folder, so no trial and no Tune/Optuna state
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []  # nothing was logged: no parent, trial or teacher run
