"""Checkpoints and caches whose pickle would run code are refused everywhere; YAML only through safe_load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from orchestrator.teacher_outputs import CachedTeacherOutputs
from orchestrator.infra.safe_load import UnsafeFileError
from orchestrator.sweep.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "sweep.search_space=kd"]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path):
    """(file, marker): a checkpoint-shaped dict carrying the payload; the marker must never appear."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "teacher.pt"
    torch.save({"arch": "tiny_teacher", "num_classes": 10, "in_channels": 1, "dataset": "digits",
                "state_dict": {}, "metrics": {}, "logits": torch.zeros(1), "payload": _Payload(marker)}, path)
    return path, marker


def test_teacher_checkpoint_with_code_is_refused_with_exit_2(evil, tmp_path, monkeypatch, capsys):
    path, marker = evil
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *TINY, f"teacher.checkpoint={path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert err.count("\n") == 0 and "refused" in err and str(path) in err, err


def test_teacher_output_cache_and_pipeline_files_with_code_are_refused(evil):
    from pipelines.teachers import _cached_metrics

    path, marker = evil
    with pytest.raises(UnsafeFileError, match="teacher-output cache .* refused"):
        CachedTeacherOutputs.load(path)
    with pytest.raises(UnsafeFileError, match="refused"):
        _cached_metrics(path)
    assert not marker.exists()


def test_every_torch_load_is_weights_only_and_yaml_is_safe_load():
    sources = [p for folder in ("orchestrator", "pipelines", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        if path.name != "safe_load.py":
            assert "torch.load(" not in text, f"{path}: read checkpoints with orchestrator.infra.safe_load.load_tensors"
        assert not re.search(r"yaml\.(load|full_load|unsafe_load)\(", text), f"{path}: use yaml.safe_load"


class _Carrier(torch.nn.Module):
    """A module whose pickle carries the payload (as an mlflow.pytorch model in pickle format would)."""

    def __init__(self, marker: Path):
        super().__init__()
        self.payload = _Payload(marker)

    def forward(self, x):
        return x


def _uri_teacher(tmp_path, log) -> str:
    """``runs:/<id>/teacher`` of a run in a sqlite store under tmp_path, its artifacts written by ``log()``."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.get_experiment_by_name("teachers")
    experiment = found.experiment_id if found else mlflow.create_experiment(
        "teachers", artifact_location=(tmp_path / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log()
    return f"runs:/{run.info.run_id}/teacher"


def test_mlflow_uri_teachers_are_never_unpickled(tmp_path, sqlite_store, monkeypatch, capsys):
    """An old pickled mlflow.pytorch teacher, and a checkpoint.pt artifact carrying code, are both refused
    (exit 2, one line); the payload never runs."""
    import mlflow.pytorch

    from orchestrator.teacher.checkpoint import TeacherCheckpointError, load_teacher

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    pickled = _uri_teacher(tmp_path, lambda: mlflow.pytorch.log_model(
        _Carrier(marker), name="teacher", pip_requirements=["torch"], serialization_format="pickle"))
    with pytest.raises(TeacherCheckpointError, match="mlflow.pytorch model .* refused. Re-log it"):
        load_teacher(pickled, 10, 1, 8)
    (tmp_path / "art").mkdir()
    torch.save({"arch": "tiny_teacher", "state_dict": {}, "payload": _Payload(marker)}, tmp_path / "art" / "checkpoint.pt")
    carrying = _uri_teacher(tmp_path, lambda: mlflow.log_artifact(str(tmp_path / "art" / "checkpoint.pt"), "teacher"))
    with pytest.raises(TeacherCheckpointError, match=f"'{carrying}' holds Python objects .* refused"):
        load_teacher(carrying, 10, 1, 8)
    capsys.readouterr()
    for uri in (pickled, carrying):
        assert main(["--dry-run", *TINY, f"teacher.checkpoint={uri}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "refused" in err and uri in err, err
    assert not marker.exists()


def test_files_that_are_not_checkpoints_are_named_as_such(evil, tmp_path):
    from orchestrator.infra.safe_load import NotACheckpointError, load_tensors

    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("a text file")
    for name in ("random.pt", "notes.pt"):
        with pytest.raises(NotACheckpointError, match=f"'{tmp_path / name}' is not a PyTorch checkpoint"):
            load_tensors(tmp_path / name, "student checkpoint")
    with pytest.raises(NotACheckpointError, match="is empty"):
        load_tensors(tmp_path / "empty.pt", "student checkpoint")
    with pytest.raises(UnsafeFileError, match="refused"):  # a real payload is still refused, not misnamed
        load_tensors(evil[0], "student checkpoint")
