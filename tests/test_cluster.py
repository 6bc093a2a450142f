"""The Ray the sweep uses: what a local Ray's workers inherit, which tracking stores a cluster can use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_reused_trial_actors_wait_for_the_previous_trial(ray_session):
    """In-process trials reuse their actor; Tune's default 2 s wait for the previous trial's thread is too short
    on a loaded machine (the next trial then errors and the sweep stalls), so the workers get 300 s."""
    from orchestrator.infra.cluster import REUSE_WAIT

    @ray_session.remote
    def seen() -> str | None:
        return os.environ.get(REUSE_WAIT)

    assert ray_session.get(seen.remote()) == "300"


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/x/mlruns", "/tmp/x/mlruns", "mlruns"])
def test_a_driver_local_tracking_store_is_refused_only_on_several_nodes(uri):
    from orchestrator.infra.cluster import driver_only_tracking

    assert driver_only_tracking(uri, 1) is None  # a local Ray or `ray start --head` alone: one disk
    reason = driver_only_tracking(uri, 2)
    assert reason and uri in reason and "1 node(s)" in reason
    assert "--tracking-uri http://" in reason and "mlflow server" in reason and "\n" not in reason


@pytest.mark.parametrize("uri", ["http://10.0.0.5:5000", "https://mlflow.example.com", "databricks"])
def test_a_tracking_server_is_accepted_on_any_cluster(uri):
    from orchestrator.infra.cluster import driver_only_tracking

    assert driver_only_tracking(uri, 1) is None and driver_only_tracking(uri, 8) is None


def test_the_package_shipped_to_the_nodes_is_the_drivers_copy():
    """ray.ship_package: Ray's py_modules get the folders the driver imports orchestrator and pipelines from."""
    import orchestrator
    import pipelines
    from orchestrator.infra.cluster import package_folders

    folders = package_folders()
    assert folders == [str(Path(orchestrator.__file__).parent), str(Path(pipelines.__file__).parent)]
    assert all((Path(f) / "__init__.py").is_file() for f in folders)
