"""One run lifecycle: only ``tracking.run_scope`` ends a run; logging or registering a model by id does not."""

from __future__ import annotations

import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.infra import tracking
from orchestrator.models import build_model
from run_checks import assert_every_run_closed, last_artifact_ms


@pytest.fixture
def store(tmp_path, sqlite_store, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = tracking.check_connection(uri)
    return uri, client, tracking.ensure_experiment(client, "x", uri)


def _register(run_id: str) -> str | None:
    model = build_model("tiny_student", 10, 1)
    return tracking.log_model(run_id, model, "best_student", "lifecycle-student", example=torch.randn(4, 1, 8, 8))


def test_registering_a_model_leaves_the_run_open_until_its_scope_ends(store, tmp_path):
    uri, client, exp = store
    run_id = tracking.start_run(client, exp, "sweep", "sweep")
    report = tmp_path / "report.html"
    with tracking.run_scope(client, run_id, on_finish=lambda: tracking.log_file(client, run_id, report, "report")):
        assert _register(run_id) == "1"
        assert client.get_run(run_id).info.status == "RUNNING"
        time.sleep(0.05)
        report.write_text("<html></html>")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.OUTCOME] == "completed"
    assert run.info.end_time >= last_artifact_ms(run) > 0
    assert len(client.search_runs([exp])) == 1  # no run opened behind the tool's back
    (logged,) = client.search_logged_models([exp])  # in the run's experiment, linked to it, ready
    assert logged.source_run_id == run_id and logged.status.name == "READY" and logged.name == "best_student"
    assert client.get_model_version("lifecycle-student", "1").run_id == run_id
    assert_every_run_closed(uri)


def test_an_error_after_registration_fails_the_run(store):
    uri, client, exp = store
    run_id = tracking.start_run(client, exp, "sweep", "sweep")
    with pytest.raises(RuntimeError, match="after registration"):
        with tracking.run_scope(client, run_id):
            assert _register(run_id) == "1"
            raise RuntimeError("injected after registration")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[tracking.OUTCOME] == "failed"
    assert "injected after registration" in run.data.tags[tracking.ERROR]
    assert_every_run_closed(uri)


def test_an_error_in_on_finish_fails_the_run_and_its_open_children(store):
    uri, client, exp = store
    run_id = tracking.start_run(client, exp, "sweep", "sweep")
    child = tracking.start_run(client, exp, "trial", "trial", parent_id=run_id)

    def report():
        raise OSError("disk full while writing the report")

    with pytest.raises(OSError):
        with tracking.run_scope(client, run_id, close_children=True, on_finish=report):
            pass
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FAILED" and "disk full" in run.data.tags[tracking.ERROR]
    assert client.get_run(child).info.status == "FINISHED"  # closed before on_finish ran: it had ended
    assert_every_run_closed(uri)


def test_a_trial_finds_its_own_run_by_a_store_filter(store):
    """A starting trial looks up its own child run by its Tune trial id: the store filters on the parent and the
    trial id, so only that run is read (not every child: the per-trial cost grew with the sweep's size)."""
    from orchestrator.sweep.trial import TrialContext, _own_run

    uri, client, exp = store
    parents = [tracking.start_run(client, exp, f"sweep-{i}", "sweep") for i in range(2)]
    ids = {(p, t): tracking.start_run(client, exp, f"trial-{t}", "trial", parent_id=p, tags={"trial_id": t})
           for p in parents for t in ("a_00001", "a_00002")}
    for parent in parents:
        ctx = TrialContext(base={}, teachers=[], teacher_outputs=[], storage_path="", tracking_uri=uri,
                           experiment_id=exp, parent_run_id=parent)
        assert [_own_run(client, ctx, t).info.run_id for t in ("a_00001", "a_00002")] == [
            ids[parent, "a_00001"], ids[parent, "a_00002"]]
        assert _own_run(client, ctx, "a_00003") is None
    assert len(tracking.child_runs(client, exp, parents[0])) == 2
    assert [r.info.run_id for r in tracking.child_runs(client, exp, parents[0], {"trial_id": "a_00002"})] == [
        ids[parents[0], "a_00002"]]


def test_closing_a_sweeps_children_reads_only_those_still_open(store):
    """A parent's scope ends its children still RUNNING; the store filters on the status, so the finished
    children of a large sweep (with their params and metrics) are not read at each stage's end."""
    uri, client, exp = store
    parent = tracking.start_run(client, exp, "sweep", "sweep")
    done, still_open = (tracking.start_run(client, exp, f"trial-{i}", "trial", parent_id=parent) for i in range(2))
    client.set_terminated(done, "FINISHED")
    assert [r.info.run_id for r in tracking.child_runs(client, exp, parent, status="RUNNING")] == [still_open]
    assert tracking.close_open_children(client, exp, parent, "KILLED", "interrupted") == 1
    assert client.get_run(still_open).info.status == "KILLED"
    assert client.get_run(still_open).data.tags[tracking.OUTCOME] == "interrupted"
    assert client.get_run(done).info.status == "FINISHED" and tracking.OUTCOME not in client.get_run(done).data.tags
    assert tracking.child_runs(client, exp, parent, status="RUNNING") == []
