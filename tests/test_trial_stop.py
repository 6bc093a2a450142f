"""A trial Tune stops (ASHA) while it waits in ``fit()`` for its Train worker group is stopped, not failed: Tune
removes the trial's placement group and the Train controller dies with it (``ActorDiedError``), before the trial's
thread could learn of the stop at a report. Found by tests/test_worker_failure.py failing in CI."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest
import ray.exceptions
import ray.train._internal.session as train_session

from orchestrator.infra import ray_compat, tracking
from orchestrator.sweep import trial
from orchestrator.config.schema import Config


def _trial_whose_controller_dies(tmp_path, monkeypatch, *, stop_asked: bool):
    """Run ``trial._launch`` with a launch that raises as a dead Train controller does; the trial's session
    has (or has not) been asked to stop by Tune. Returns the trial's MLflow run after it ended."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.check_connection(uri)
    exp = tracking.ensure_experiment(client, "stop", uri)
    parent = tracking.start_run(client, exp, "sweep", "sweep")
    run_id = tracking.start_run(client, exp, "trial-002", "trial", parent_id=parent, tags={"trial_id": "b"})
    tracking.log_metrics(client, run_id, {"epoch": 1.0}, step=1)  # of 5 (Config().train.epochs)
    session = SimpleNamespace(stop_event=threading.Event())
    monkeypatch.setattr(train_session, "get_session", lambda: session)

    def launch(cfg, loop_config, *, name, storage_path):
        if stop_asked:
            session.stop_event.set()
        raise ray.exceptions.ActorDiedError()  # the controller, gone with the trial's placement group

    monkeypatch.setattr(trial, "launch", launch)
    ctx = trial.TrialContext(base={"seed": 0}, teachers=[], teacher_outputs=[], storage_path=str(tmp_path),
                             tracking_uri=uri, experiment_id=exp, parent_run_id=parent)
    with pytest.raises(SystemExit if stop_asked else ray.exceptions.ActorDiedError):
        trial._launch(Config(), ctx, run_id, [1], name="t")
    return client.get_run(run_id)


def test_a_trial_whose_controller_dies_as_tune_stops_it_ends_early_stopped(tmp_path, sqlite_store, monkeypatch):
    run = _trial_whose_controller_dies(tmp_path, monkeypatch, stop_asked=True)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.OUTCOME] == "early_stopped"
    assert tracking.ERROR not in run.data.tags


def test_a_controller_that_dies_on_its_own_still_fails_the_trial(tmp_path, sqlite_store, monkeypatch):
    run = _trial_whose_controller_dies(tmp_path, monkeypatch, stop_asked=False)
    assert run.info.status == "FAILED" and "ActorDiedError" in run.data.tags[tracking.ERROR]


def _trainable_reporting_as_train_does(config):
    """Report through the trial session's inter-actor queue, as Train's ``TuneReportCallback`` does from the
    controller, then wait (as ``fit()`` does) and write down when the stop signal turns on."""
    stopping = ray_compat.tune_stop_signal()
    train_session.get_session()._get_or_create_inter_actor_queue().put({"epoch": 1})
    with open(config["marker"], "w", buffering=1) as out:
        out.write(f"before {stopping()}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not stopping():
            time.sleep(0.0002)
        out.write(f"after {stopping()}\n")
    time.sleep(30)  # Tune ends the actor first


@pytest.mark.slow
def test_the_stop_signal_turns_on_when_tune_stops_a_trial_waiting_in_fit(ray_session, tmp_path):
    """What the fix relies on, with real Ray Tune: the signal taken at the trial's start is off while it runs and
    on once Tune stops the trial, although Tune drops the trial's session at the same time."""
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    marker = tmp_path / "marker"
    tune.Tuner(
        _trainable_reporting_as_train_does, param_space={"marker": str(marker)},
        run_config=tune.RunConfig(stop={"training_iteration": 1}, storage_path=str(tmp_path / "runs"), verbose=0),
    ).fit()
    for _ in range(50):  # the actor may still be writing as fit() returns
        if "after" in marker.read_text():
            break
        time.sleep(0.1)
    assert marker.read_text().split("\n")[:2] == ["before False", "after True"]
