"""A driver killed between Tune creating a trial and saving its experiment state (issue #14): nothing is
issued or run twice on resume, and a confirmation job that had ended gives the stage what it gave before.
The end-to-end check (3 SIGKILLs of a real sweep) is
tests/test_sweep.py::test_driver_sigkill_three_times_then_resume_finishes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from orchestrator.infra import tracking
from orchestrator.infra.ray_compat import JournalSearch
from orchestrator.sweep.folder import optuna_storage
from orchestrator.sweep.trial import TrialContext, _open_run

ROOT = Path(__file__).resolve().parent.parent


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    if trial.suggest_categorical("method", ["a", "b"]) == "b":
        trial.suggest_int("k", 1, 9)


def _searcher(folder: Path, fresh: bool = False) -> JournalSearch:
    """As Tune builds it (tuner.pkl holds the searcher as constructed; a restore then loads its saved state)."""
    return JournalSearch(space=_space, metric="score", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                         study_name="s", storage=optuna_storage(folder, fresh=fresh))


def test_optuna_trial_orphaned_by_a_killed_driver_goes_to_the_next_tune_trial(tmp_path):
    saved = str(tmp_path / "searcher-state.pkl")
    first = _searcher(tmp_path, fresh=True)
    first.suggest("t1")
    first.on_trial_complete("t1", {"score": 1.0})
    first.suggest("t2")
    first.save(saved)  # Tune's last experiment state: t1 finished, t2 created
    orphaned = first.suggest("t3")  # asked (in the journal), then the driver dies before Tune saves again

    restored = _searcher(tmp_path)
    restored.restore(saved)
    assert [t.number for t in restored.orphans()] == [2]
    assert restored.suggest("t3-new") == orphaned  # the restored Tune's next trial: the same Optuna trial
    assert restored._ot_trials["t3-new"].number == 2 and not restored.orphans()
    fresh = restored.suggest("t4")  # then new ones
    assert restored._ot_trials["t4"].number == 3 and fresh
    for trial_id, score in (("t2", 0.5), ("t3-new", 2.0), ("t4", 0.1)):
        restored.on_trial_complete(trial_id, {"score": score})

    study = optuna.load_study(study_name="s", storage=optuna_storage(tmp_path, fresh=False))
    assert [(t.number, t.state) for t in study.trials] == [(n, TrialState.COMPLETE) for n in range(4)]


def test_trials_the_journal_finished_are_not_reported_to_after_a_restore(tmp_path):
    saved = str(tmp_path / "searcher-state.pkl")
    first = _searcher(tmp_path, fresh=True)
    first.suggest("t1")
    first.on_trial_result("t1", {"score": 0.5, "training_iteration": 1})
    first.save(saved)  # Tune saved while t1 ran
    first.on_trial_complete("t1", {"score": 0.6})  # t1 finished (the journal has it), then the driver died

    restored = _searcher(tmp_path)
    restored.restore(saved)  # Tune still has t1 running and resumes it: its reports are ignored
    restored.on_trial_result("t1", {"score": 0.7, "training_iteration": 2})
    restored.on_trial_complete("t1", {"score": 0.7})
    (trial,) = optuna.load_study(study_name="s", storage=optuna_storage(tmp_path, fresh=False)).trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.6 and set(trial.intermediate_values) == {1}


def test_runs_left_running_are_closed_killed_on_resume_and_finished_trials_are_not_reopened(tmp_path, sqlite_store):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.check_connection(uri)
    exp = tracking.ensure_experiment(client, "kill", uri)
    parent = tracking.start_run(client, exp, "sweep", "sweep")
    running = tracking.start_run(client, exp, "trial-001", "trial", parent_id=parent, tags={"trial_id": "a"})
    done = tracking.start_run(client, exp, "trial-002", "trial", parent_id=parent, tags={"trial_id": "b"})
    tracking.end_run(client, done, "FINISHED", {tracking.OUTCOME: "early_stopped"})
    stage = tracking.start_run(client, exp, "confirm", "stage", parent_id=parent)
    job = tracking.start_run(client, exp, "job", "confirm", parent_id=stage, tags={"trial_id": "c"})

    assert tracking.close_runs_left_open(client, exp, parent) == 3  # the driver died with these open
    for run_id in (running, stage, job):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags[tracking.OUTCOME] == "interrupted"
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(parent).info.status == "RUNNING"  # the resumed driver's own

    ctx = TrialContext(base={}, teachers=[], teacher_outputs=[], storage_path=str(tmp_path), tracking_uri=uri,
                       experiment_id=exp, parent_run_id=parent)
    assert _open_run(ctx, "a", "trial-001", "trial", {}, {}) == (running, False)  # a resumed trial continues its run
    assert client.get_run(running).info.status == "RUNNING"
    assert _open_run(ctx, "b", "trial-002", "trial", {}, {}) == (done, True)  # one that had ended is not run again
    assert client.get_run(done).info.status == "FINISHED"


def test_the_state_file_keeps_the_parent_once_a_stage_is_recorded(tmp_path):
    """The root cause of a sweep run left RUNNING after a kill during the confirmation stage (the 3-kill test,
    once in CI): a fresh sweep wrote the parent's id to the state file, then the stage wrote its own state,
    which did not hold the parent's id, over it. The next --resume found no parent, opened a second one and
    left the first RUNNING (params, no metrics)."""
    from orchestrator.sweep.folder import STATE_FILE, open_folder, record_state

    folder, state = open_folder(tmp_path, "s", None)  # a fresh sweep: {}
    record_state(folder, state, parent_run_id="p", experiment_id="1")  # the sweep's start (run.py)
    record_state(folder, state, confirm_run_id="c")  # the confirmation stage (confirm_stage.py)
    _, resumed = open_folder(tmp_path, "s", "latest")
    assert resumed == {"parent_run_id": "p", "experiment_id": "1", "confirm_run_id": "c"}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert json.loads((folder / STATE_FILE).read_text()) == resumed


def test_a_resume_closes_what_a_killed_driver_left_by_its_recorded_outcome_and_finds_a_lost_parent(tmp_path, sqlite_store):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.check_connection(uri)
    exp = tracking.ensure_experiment(client, "kill", uri)
    folder = str(tmp_path / "runs" / "s-1")
    parent = tracking.start_run(client, exp, "s-1", "sweep", tags={"storage": folder})
    # A folder whose state file lost the parent's id (written by the earlier version): the resume finds it.
    assert tracking.sweep_run_of(client, exp, folder) == parent
    assert tracking.sweep_run_of(client, exp, str(tmp_path / "other")) is None

    # Tune stopped trial "a" (ASHA) and ended its actor while the trial closed its run: the outcome was
    # written, the status not. Trial "b" had not recorded an outcome; trial "c" was resumed and reopened.
    stopped = tracking.start_run(client, exp, "trial-001", "trial", parent_id=parent, tags={"trial_id": "a"})
    tracking.log_metrics(client, stopped, {"epoch": 2}, step=2)
    tracking.set_tags(client, stopped, {tracking.OUTCOME: "early_stopped"})
    closing = tracking.start_run(client, exp, "trial-002", "trial", parent_id=parent, tags={"trial_id": "b"})
    tracking.log_metrics(client, closing, {"epoch": 3}, step=3)
    assert tracking.close_runs_left_open(client, exp, parent) == 2
    assert client.get_run(stopped).info.status == "FINISHED"  # its own outcome, not "interrupted"
    assert client.get_run(closing).info.status == "KILLED"

    tracking.reopen_run(client, closing)  # a trial that resumes: no stale outcome left
    assert client.get_run(closing).info.status == "RUNNING"
    assert tracking.OUTCOME not in client.get_run(closing).data.tags
    tracking.end_run(client, closing, "KILLED", {tracking.OUTCOME: "interrupted"})

    # After the resumed search, Tune has both as ended: the run the resume closed KILLED is finished with
    # the outcome its epochs say.
    assert tracking.finish_ended_trials(client, exp, parent, {"a", "b"}, expected_epochs=3) == 1
    run = client.get_run(closing)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.OUTCOME] == "completed"


def _trainable_that_checks_it_is_saved(config, folder: str):
    """Reports whether Tune's experiment state in ``folder`` (on the storage path, what a restore reads) held
    this trial when its function started."""
    from ray import tune

    states = list(Path(folder).glob("experiment_state-*.json"))  # one per driver session
    saved = len(states) == 1 and tune.get_context().get_trial_id() in states[0].read_text()
    tune.report({"score": config["x"], "saved_before_start": saved})


@pytest.mark.slow
def test_a_trial_starts_only_once_tunes_saved_state_holds_it(ray_session, tmp_path):
    """The root cause, without killing anything: Tune saves its experiment state at trial checkpoints and every
    >= 10 s, so a trial created in between ran unknown to any saved state; a driver killed then lost it."""
    import ray.cloudpickle
    from ray import tune

    from orchestrator.infra.ray_compat import save_state_before_trials_start

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    save_state_before_trials_start()
    searcher = _searcher(tmp_path, fresh=True)
    results = tune.Tuner(
        tune.with_parameters(_trainable_that_checks_it_is_saved, folder=str(tmp_path / "runs" / "exp")),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=3, max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path / "runs"), verbose=0),
    ).fit()
    assert [r.metrics["saved_before_start"] for r in results] == [True] * 3


@pytest.mark.slow
def test_trial_started_before_tunes_save_resumes_under_its_own_id_and_number(tmp_path):
    """The root cause of the duplicate trial numbers: Tune started trial 2 and the driver was SIGKILLed
    before Tune saved a state holding it. The trial must be resumed under its id and number, not created
    again next to an orphaned Optuna trial (before the fix: `..._2_` twice, with two ids)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = [sys.executable, str(Path(__file__).parent / "data" / "tune_driver.py"), str(tmp_path)]
    ray_temp = f"/tmp/distill-ray-driverkill-{os.getpid()}"  # short: Ray's socket paths have a length limit
    with open(tmp_path / "fresh.log", "w") as log:
        proc = subprocess.Popen([*script, "fresh", ray_temp], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 120
    while not (tmp_path / "paused").exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "fresh.log").read_text()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()

    try:
        done = subprocess.run([*script, "resume", ray_temp], env=env, capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ", 1)[1].splitlines()[0])
    starts = [line.split() for line in (tmp_path / "starts.log").read_text().splitlines()]
    numbers = {trial_id: name.split(f"{trial_id}_", 1)[1].split("_", 1)[0] for trial_id, name in starts}
    assert sorted(numbers.values()) == ["1", "2"], starts  # each number issued to one trial id
    assert [trial_id for trial_id, _ in starts].count(next(i for i, n in numbers.items() if n == "2")) == 2
    assert {name.split("_")[1] for name in results} == set(numbers)  # the trial that started is the one resumed
    study = optuna.load_study(study_name="exp", storage=optuna_storage(tmp_path / "runs" / "exp", fresh=False))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # no orphan


def _job_run_that_ended(tmp_path: Path, trial_id: str, tune_folder: Path, epochs_logged: int = 3,
                        checkpoints: tuple[int, ...] = (1, 2, 3), train_run: bool = False):
    """A confirmation job (Tune trial ``trial_id``, seed 7, 3 epochs) whose MLflow run ended FINISHED after
    logging ``epochs_logged`` epochs, with a student checkpoint per epoch in ``checkpoints`` (in the Tune trial's
    folder ``tune_folder``, or with ``train_run`` in its Ray Train run's folder, as a worker group writes them)."""
    from types import SimpleNamespace

    import torch

    from orchestrator.config.schema import load_config, to_dict
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.check_connection(uri)
    exp = tracking.ensure_experiment(client, "kill", uri)
    stage = tracking.start_run(client, exp, "confirm", "stage")
    run = tracking.start_run(client, exp, "trial 1 seed 7", "confirm", parent_id=stage, tags={"trial_id": trial_id})
    per_epoch = {e: {"train/loss": 1.0 / e, "val/acc1": 0.5 + e / 10, **({"test/acc1": 0.8} if e == 3 else {})}
                 for e in (1, 2, 3)}
    for epoch in range(1, epochs_logged + 1):
        tracking.log_metrics(client, run, {**per_epoch[epoch], "epoch": epoch}, step=epoch)
    tracking.end_run(client, run, "FINISHED", {tracking.OUTCOME: "completed"})

    cfg = load_config(None, ["train.epochs=3"])
    train_folder = tmp_path / "train" / f"{cfg.name}-confirm-{trial_id}"
    data = SimpleNamespace(num_classes=3, in_channels=1, name="toy", image_size=2, resize="resize_then_center_crop")
    for epoch in checkpoints:
        folder = (train_folder / f"checkpoint_2026-12-01_0{epoch}" if train_run
                  else tune_folder / f"checkpoint_00000{epoch - 1}")
        folder.mkdir(parents=True, exist_ok=True)  # (over one Tune wrote: the slow test)
        save_model_checkpoint(folder / "student.pt", torch.nn.Linear(2, 3), "tiny_student", data, per_epoch[epoch])
        os.utime(folder / "student.pt", (epoch, epoch))  # written in epoch order
    ctx = TrialContext(base=to_dict(cfg), teachers=[], teacher_outputs=[], storage_path=str(tmp_path),
                       tracking_uri=uri, experiment_id=exp, parent_run_id=stage)
    job = {"key": "0-7", "label": "trial 1", "overrides": {}, "seed": 7}
    return SimpleNamespace(client=client, run=run, ctx=ctx, job=job, per_epoch=per_epoch, tune_folder=tune_folder,
                           train_folder=train_folder)


def _finished_job(tmp_path, monkeypatch, **kwargs):
    """:func:`_job_run_that_ended` as Tune trial "c", run_job's Tune context faked; the driver's last saved Tune
    state had the job running at epoch 2 with epoch 2's checkpoint (``restored``: the result Tune holds)."""
    from types import SimpleNamespace

    import ray.tune

    tune_folder = tmp_path / "confirm" / "run_job_c_00000_0_job=x"
    tune_folder.mkdir(parents=True)
    job = _job_run_that_ended(tmp_path, "c", tune_folder, **kwargs)
    job.reported = []
    context = SimpleNamespace(get_trial_id=lambda: "c",
                              get_storage=lambda: SimpleNamespace(trial_fs_path=str(tune_folder)))
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint=None: job.reported.append(metrics))
    job.restored = SimpleNamespace(config={"job": job.job}, error=None, metrics={**job.per_epoch[2], "epoch": 2},
                                   checkpoint=SimpleNamespace(path=str(tune_folder / "checkpoint_000001")))
    return job

@pytest.mark.parametrize("train_run", [False, True], ids=["in-process", "worker-group"])
def test_a_confirmation_job_that_ended_before_the_kill_gives_the_stage_its_final_numbers_and_student(
        tmp_path, sqlite_store, monkeypatch, train_run):
    """Tune's saved state had the job running (epoch 2, its checkpoint); its MLflow run had ended FINISHED.
    Before the fix the resumed job reported nothing: the stage counted it as failed and the verdict lost its seed.
    Now it reports what it reported last: the last epoch's numbers and the checkpoint holding that epoch's student."""
    from types import SimpleNamespace

    from orchestrator.sweep.confirm import outcome
    from orchestrator.infra.safe_load import load_tensors
    from orchestrator.sweep.trial import run_job

    job = _finished_job(tmp_path, monkeypatch, train_run=train_run)
    other = SimpleNamespace(config={"job": {**job.job, "key": "0-8", "seed": 8}}, error=None, checkpoint=None,
                            metrics={"val/acc1": 0.7, "test/acc1": 0.75, "checkpoint_path": "elsewhere"})

    before = outcome.Candidate("trial 1", {}, "tuned")  # what the stage got before: the restored result only
    assert outcome.collect([job.restored, other], [before]) == ["trial 1 seed 7"]
    assert sorted(before.test) == [8]

    run_job({"job": job.job}, job.ctx)  # the resumed job: not trained again (no launch), its result read back
    (reported,) = job.reported
    final = job.train_folder / "checkpoint_2026-12-01_03" if train_run else job.tune_folder / "checkpoint_000002"
    assert reported == {**job.per_epoch[3], "epoch": 3, "checkpoint_path": str(final)}
    assert job.client.get_run(job.run).info.status == "FINISHED"

    cand = outcome.Candidate("trial 1", {}, "tuned")
    resumed = SimpleNamespace(**{**vars(job.restored), "metrics": reported})  # Tune's last result = the new report
    assert outcome.collect([resumed, other], [cand]) == []
    assert (cand.val, cand.test) == ({7: 0.8, 8: 0.7}, {7: 0.8, 8: 0.75})
    assert cand.checkpoints[7] == str(final)  # not the restored epoch-2 checkpoint Tune still holds
    assert load_tensors(final / "student.pt", "student")["metrics"]["test/acc1"] == 0.8


@pytest.mark.parametrize(("epochs_logged", "checkpoints", "says"), [
    (3, (1, 2), "no checkpoint under"),  # the last epoch's student is not there: an earlier one is never used
    (2, (1, 2), "logged epoch 2 of 3 without test/acc1"),
])
def test_a_finished_confirmation_job_whose_result_is_not_whole_fails_clearly(tmp_path, sqlite_store, monkeypatch, epochs_logged,
                                                                            checkpoints, says):
    from orchestrator.sweep.confirm.finished_job import FinishedJobError
    from orchestrator.sweep.trial import run_job

    job = _finished_job(tmp_path, monkeypatch, epochs_logged=epochs_logged, checkpoints=checkpoints)
    with pytest.raises(FinishedJobError, match=says):
        run_job({"job": job.job}, job.ctx)
    assert job.reported == []
    assert says in job.client.get_run(job.run).data.tags[tracking.ERROR]  # what the stage's FAILED line points to


def _job_whose_run_ended_before_the_kill(config, tmp: str):
    """A Tune trainable: Tune holds an earlier checkpoint of this job (reported here first, as the restored Tune
    state would have it); its MLflow run and checkpoints are those of a job that then finished; then run_job."""
    import tempfile

    import torch
    from ray import tune

    from orchestrator.sweep.trial import run_job

    with tempfile.TemporaryDirectory() as folder:
        torch.save({"metrics": {}}, Path(folder) / "student.pt")
        tune.report({"epoch": 2}, checkpoint=tune.Checkpoint.from_directory(folder))
    context = tune.get_context()
    job = _job_run_that_ended(Path(tmp), context.get_trial_id(), Path(context.get_storage().trial_fs_path))
    run_job(config, job.ctx)


@pytest.mark.slow
def test_a_finished_confirmation_job_reports_its_final_result_through_tune(ray_session, tmp_path):
    """The same as the fast test through a real Tune run (its context, storage folder, report and ResultGrid)."""
    import ray.cloudpickle
    from ray import tune

    from orchestrator.sweep.confirm import outcome
    from orchestrator.infra.safe_load import load_tensors

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    job = {"key": "0-7", "label": "trial 1", "overrides": {}, "seed": 7}
    results = tune.Tuner(
        tune.with_parameters(_job_whose_run_ended_before_the_kill, tmp=str(tmp_path)), param_space={"job": job},
        run_config=tune.RunConfig(name="confirm", storage_path=str(tmp_path / "runs"), verbose=0),
    ).fit()
    cand = outcome.Candidate("trial 1", {}, "tuned")
    assert outcome.collect(results, [cand]) == []
    assert (cand.val, cand.test) == ({7: 0.8}, {7: 0.8})
    final = Path(cand.checkpoints[7])
    assert final.name == "checkpoint_000002" and final != Path(results[0].checkpoint.path)  # not Tune's own
    assert load_tensors(final / "student.pt", "student")["metrics"]["test/acc1"] == 0.8
