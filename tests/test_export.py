"""Students out: ONNX/TorchScript parity and latency, tags on the model version, loading without this package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import tracking
from orchestrator.export import example_batch, export_one, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student():
    """(data, tiny_student trained 2 epochs on digits)."""
    from orchestrator.config import load_config
    from orchestrator.data import build_data
    from orchestrator.teachers import train_alone

    cfg = load_config(None, ["data.dataset=digits", "data.batch_size=64"])
    data = build_data(cfg.data, cfg.seed)
    model, _ = train_alone(cfg, data, "tiny_student", 2, 0.1, label="student")
    return data, model.eval()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_within_tolerance(student, fmt, tmp_path, capsys):
    data, model = student
    result = export_one(model, fmt, example_batch(data), tmp_path)
    assert Path(result["path"]).is_file()
    assert result["max_abs_diff"] <= result["tolerance"] <= 1e-3
    assert result["latency_ms_b1"] > 0 and result["latency_ms_b64"] > 0
    assert "tolerance" in capsys.readouterr().out


@pytest.fixture
def registered(student, tmp_path, monkeypatch):
    """A registered student as the sweep logs it: tool checkpoint + ONNX model version 1."""
    import mlflow

    from orchestrator.teachers import save_model_checkpoint

    data, model = student
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = tracking.check_connection(uri)
    run_id = tracking.start_run(client, tracking.ensure_experiment(client, "x", uri), "sweep", "sweep")
    save_model_checkpoint(tmp_path / "best_student.pt", model, "tiny_student", data, {})
    tracking.log_file(client, run_id, tmp_path / "best_student.pt")
    version = tracking.log_model(run_id, model, "best_student", "distill-student", example=example_batch(data))
    tracking.end_run(client, run_id)
    return uri, version


def test_export_cli_tags_the_model_version(registered, tmp_path):
    uri, version = registered
    out = tmp_path / "s.pt"
    assert main([f"models:/distill-student/{version}", "--format", "torchscript", "--out", str(out),
                 "--tracking-uri", uri]) == 0
    assert out.is_file()
    tags = MlflowClient(uri).get_model_version("distill-student", version).tags
    for key in ("max_abs_diff", "tolerance", "latency_ms_b1", "latency_ms_b64"):
        assert f"export.torchscript.{key}" in tags
    assert main(["models:/no-such-model/1", "--tracking-uri", uri]) == 2


LOAD_WITHOUT_PACKAGE = r"""
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("orchestrator", "pipelines"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
sys.path = [p for p in sys.path if p not in ("", sys.argv[1])]
try:
    import orchestrator
    sys.exit("orchestrator is importable")
except ModuleNotFoundError:
    pass
import mlflow, numpy as np
model = mlflow.pyfunc.load_model(sys.argv[2])
logits = model.predict(np.zeros((3, 1, 8, 8), dtype=np.float32))["logits"]
print("logits", logits.shape)
"""


def test_registered_student_loads_and_predicts_without_this_package(registered):
    uri, version = registered
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_PACKAGE, str(REPO), f"models:/distill-student/{version}"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "logits (3, 10)" in done.stdout
