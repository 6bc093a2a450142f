"""Why trials failed reaches the user in one line: a config problem raised inside a trial exits 2 with its
message and trial number, without Ray's tracebacks; a crash names the file holding its traceback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.exceptions import RayTaskError

from orchestrator.config.schema import ConfigError
from orchestrator.sweep.trial_errors import TrialInputError, failures, report, root_error, trial_number_of

CONFLICTING_SPACE = str(Path(__file__).parent / "data" / "conflicting_space.yaml")


def _result(path: str, error: BaseException | None) -> SimpleNamespace:
    return SimpleNamespace(path=path, error=error)


def test_root_error_unwraps_ray_and_worker_group_wrappers():
    cause = ConfigError("distill.kd.temperature", -1, "> 0")
    wrapped = RayTaskError("run_trial", "Traceback ...", cause).as_instanceof_cause()
    assert root_error(wrapped) is cause
    group = RuntimeError("worker group failed")
    group.worker_failures = {0: wrapped}
    assert root_error(group) is cause
    try:
        raise RuntimeError("outer") from cause
    except RuntimeError as chained:
        assert root_error(chained) is cause
    assert root_error(pickle.loads(pickle.dumps(cause))).key == "distill.kd.temperature"


def test_trial_number_read_from_the_trial_folder():
    assert trial_number_of("/runs/x/run_trial_2e811ba8_5_distill.crd.nce_k=256_2026-12-05_16-09-55") == 5
    assert trial_number_of("/runs/x/run_job_0a1b2_12_job=a_2026") == 12
    assert trial_number_of(None) == 0


def test_config_problems_are_one_line_each_and_crashes_name_their_log(tmp_path, capsys):
    problem = ConfigError("distill.crd.queue_size", 128, "an integer >= nce_k (256)")
    found = failures([
        _result("/r/run_trial_aaaaaaaa_6_x", problem), _result("/r/run_trial_bbbbbbbb_2_x", None),
        _result("/r/run_trial_cccccccc_5_x", problem), _result("/r/run_trial_dddddddd_3_x", ZeroDivisionError("boom")),
    ])
    assert [f.number for f in found] == [3, 5, 6]
    with pytest.raises(TrialInputError) as err:
        report(found, tmp_path / "errors")
    assert str(err.value) == f"trials 5, 6: {problem}"
    out = capsys.readouterr().out
    assert "trial 3 crashed: ZeroDivisionError: boom" in out and str(tmp_path / "errors" / "trial-003.log") in out
    assert "ZeroDivisionError: boom" in (tmp_path / "errors" / "trial-003.log").read_text()
    report([f for f in found if f.number == 3], tmp_path / "errors")  # a crash alone: no exit 2


@pytest.mark.slow
def test_trial_config_error_through_real_ray_exits_2_with_one_line(isolated_cache, tmp_path, sqlite_store):
    """The space's extremes are valid, but two of its combinations are not (CRD's queue below K): the trials
    that draw them fail inside Ray with a ConfigError."""
    args = [
        sys.executable, "-m", "orchestrator.sweep", "--name", "conflict", "--num-samples", "6",
        "--storage-path", str(tmp_path / "runs"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
        "teacher.epochs=2", "train.epochs=1", f"sweep.search_space={CONFLICTING_SPACE}", "sweep.confirm.top_k=0",
        "sweep.max_concurrent=1", "sweep.paper_defaults=false", "train.max_failures=0",
    ]
    done = subprocess.run(args, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert errors[0].startswith("error: trial") and "config key 'distill.crd.queue_size'" in errors[0]
    assert output.count("K negatives are drawn from the queue") == 1, output
    assert "TypeError" not in output and "Traceback" not in output, output
