"""A Ray Train worker killed mid-trial (SIGKILL) is restarted from its last checkpoint (train.max_failures);
the trial finishes in the same MLflow run, epochs 1..E logged once each; old checkpoints are deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")


@pytest.mark.slow
def test_killed_train_worker_restarts_and_history_stays_contiguous(isolated_cache, tmp_path):
    marker = tmp_path / "killed"
    env = {
        **os.environ, "DISTILL_RAY_TMPDIR": f"/tmp/distill-ray-kill-{os.getpid()}",
        "DISTILL_TEST_KILL_AT_EPOCH": "2", "DISTILL_TEST_KILL_MARKER": str(marker),  # read in train_loop
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "--name", "kill", "--num-samples", "2", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
        "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "teacher.epochs=3",
        f"sweep.search_space={SPACE}", "train.epochs=3", "sweep.max_concurrent=1",
        "train.in_process=false", "train.num_workers=1", "sweep.baseline=false", "sweep.confirm.top_k=0",
    ]
    done = subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert marker.exists()  # a worker really was killed

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("kill")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`orchestrator.kind` = 'trial'")
    assert len(trials) == 2 and len({t.data.tags["trial_id"] for t in trials}) == 2
    for run in trials:  # ASHA may stop trial 2 at its last rung; the killed trial 1 (first to epoch 2) runs on
        assert run.info.status == "FINISHED", run.data.tags.get("orchestrator.error")
        steps = {key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
                 for key in ("epoch", "val/acc1", "train/loss")}
        expected = [1, 2, 3] if run.info.run_name == "trial-001" else steps["epoch"]
        assert all(s == expected == list(range(1, len(s) + 1)) for s in steps.values()), steps

    # Retention (train.keep_checkpoints=1): the best and the latest checkpoint per Train run, not one per epoch.
    train_runs = list((tmp_path / "runs").glob("kill-*/train/*"))
    assert len(train_runs) == 2
    for run_dir in train_runs:
        kept = [p for p in run_dir.glob("checkpoint_*") if p.is_dir()]
        assert 1 <= len(kept) <= 2, sorted(p.name for p in run_dir.iterdir())
