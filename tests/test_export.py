"""Students out: ONNX/TorchScript parity and latency, self-description, files touched, messages, tags on the model
version, loading without this package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.infra import tracking
from orchestrator.export import FILES, example_batch, export_one, main, metadata

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student():
    """(data, tiny_student trained 2 epochs on digits)."""
    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.run.alone import train_alone

    cfg = load_config(None, ["data.dataset=digits", "data.batch_size=64"])
    data = build_data(cfg.data, cfg.seed)
    model, _ = train_alone(cfg, data, "tiny_student", 2, 0.1, label="student")
    return data, model.eval()


@pytest.mark.parametrize("in_graph", [True, False])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_within_tolerance(student, fmt, in_graph, tmp_path, capsys):
    data, model = student
    result = export_one(model, fmt, example_batch(data), tmp_path / FILES[fmt], metadata(data, in_graph))
    assert Path(result["path"]) == tmp_path / FILES[fmt] and Path(result["path"]).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILES[fmt]]  # no temporary file left
    assert result["max_abs_diff"] <= result["tolerance"] <= 1e-3
    assert result["latency_ms_b1"] > 0 and result["latency_ms_b64"] > 0
    assert "tolerance" in capsys.readouterr().out


def _raw_val(data) -> tuple[np.ndarray, np.ndarray]:
    """(raw [0, 1] pixels (N, C, H, W) float32, normalised pixels) of the whole validation split."""
    normalised = torch.stack([data.val[i][0] for i in range(len(data.val))])
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    return (normalised * std + mean).numpy().astype(np.float32), normalised


def test_default_onnx_takes_raw_pixels_and_describes_itself(student, tmp_path):
    """onnxruntime alone: raw [0, 1] pixels give the PyTorch student's predictions on normalised pixels; the
    metadata names the preprocessing and the labels."""
    import onnxruntime

    data, model = student
    path = export_one(model, "onnx", example_batch(data), tmp_path / "s.onnx", metadata(data, True))["path"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    raw, normalised = _raw_val(data)
    with torch.no_grad():
        expected = model(normalised).logits.argmax(1).numpy()
    got = session.run(None, {"images": raw})[0].argmax(1)
    assert (got == expected).mean() == 1.0 and len(got) == len(data.val)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["mean"]) == pytest.approx(list(data.mean)) and json.loads(meta["std"]) == pytest.approx(list(data.std))
    assert json.loads(meta["class_names"]) == list(data.classes)
    assert json.loads(meta["input_size"]) == [1, 8, 8] and meta["channel_order"] == "L"
    assert meta["preprocessing_in_graph"] == "true" and meta["input_range"] == "[0, 1]"


def test_torchscript_carries_the_same_metadata(student, tmp_path):
    from orchestrator.deploy.convert import TORCHSCRIPT_METADATA

    data, model = student
    meta = metadata(data, True, {"teacher": "tiny_teacher"})
    path = export_one(model, "torchscript", example_batch(data), tmp_path / "s.pt", meta)["path"]
    extra = {TORCHSCRIPT_METADATA: ""}
    torch.jit.load(path, _extra_files=extra)
    assert json.loads(extra[TORCHSCRIPT_METADATA]) == meta


@pytest.fixture
def checkpoint(student, tmp_path):
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    data, model = student
    path = tmp_path / "ckpt" / "best_student.pt"
    path.parent.mkdir()
    save_model_checkpoint(path, model, "tiny_student", data, {})
    return path


def test_export_writes_exactly_out_and_leaves_other_files_alone(checkpoint, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    theirs = folder / "student.onnx"
    theirs.write_bytes(b"the user's own model, not ours")
    before = theirs.read_bytes()
    out = folder / "mine.onnx"
    assert main([str(checkpoint), "--out", str(out)]) == 0
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["mine.onnx", "student.onnx"]
    assert out.stat().st_mode & 0o777 == theirs.stat().st_mode & 0o777  # the umask's mode, not mkstemp's 0600
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "student.onnx" not in printed
    written = out.read_bytes()
    assert main([str(checkpoint), "--out", str(out)]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err and out.read_bytes() == written
    assert main([str(checkpoint), "--out", str(out), "--force", "--format", "torchscript"]) == 0
    assert out.read_bytes() != written and theirs.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["mine.onnx", "student.onnx"]


def _export_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_export_messages_name_the_real_problem(student, tmp_path, monkeypatch, capsys):
    data, model = student
    monkeypatch.chdir(tmp_path)
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "not a PyTorch checkpoint" in _export_error(["random.pt"], capsys)
    assert "empty" in _export_error(["empty.pt"], capsys)
    assert "no such file: 'missing.pt'" in _export_error(["missing.pt"], capsys)
    assert "--arch" in _export_error(["weights.pt", "--dataset", "digits"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no export/ folder
    assert main(["weights.pt", "--arch", "tiny_student", "--dataset", "digits", "--out", "w.onnx"]) == 0
    assert (tmp_path / "w.onnx").is_file()


def test_export_help_lists_formats_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "{onnx,torchscript}" in text and "(default: onnx)" in text and "--force" in text
    assert "``" not in text and "--include-preprocessing" in text


@pytest.fixture
def registered(student, tmp_path, sqlite_store, monkeypatch):
    """A registered student as the sweep logs it: tool checkpoint + ONNX model version 1."""
    import mlflow

    from orchestrator.teacher.checkpoint import save_model_checkpoint

    data, model = student
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = tracking.check_connection(uri)
    run_id = tracking.start_run(client, tracking.ensure_experiment(client, "x", uri), "sweep", "sweep")
    save_model_checkpoint(tmp_path / "best_student.pt", model, "tiny_student", data, {})
    tracking.log_file(client, run_id, tmp_path / "best_student.pt")
    version = tracking.log_model(run_id, model, "best_student", "distill-student", example=example_batch(data),
                                 metadata=metadata(data, False))
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


def test_registered_student_has_a_signature_an_input_example_and_its_preprocessing(registered):
    import mlflow

    uri, version = registered
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/distill-student/{version}")
    assert info.signature is not None and info.signature.outputs.input_names() == ["logits"]
    assert info.signature.inputs.inputs[0].shape[1:] == (1, 8, 8)
    assert info.saved_input_example_info is not None
    import mlflow.onnx

    props = {p.key: p.value for p in mlflow.onnx.load_model(info.model_uri).metadata_props}
    assert props["preprocessing_in_graph"] == "false" and "mean" in props and "class_names" in props


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


@pytest.mark.parametrize("in_graph", [True, False])
def test_sweep_export_names_teacher_config_and_honours_include_preprocessing(student, in_graph, tmp_path):
    """What a sweep exports (export_student with its Config): export.include_preprocessing decides the input."""
    import onnxruntime

    from orchestrator.config.schema import load_config
    from orchestrator.export import export_student

    data, model = student
    cfg = load_config(None, ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student",
                             f"export.include_preprocessing={str(in_graph).lower()}"])
    path = export_student(model, data, ["onnx"], tmp_path, cfg=cfg)["onnx"]["path"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["teacher"] == "tiny_teacher" and meta["student"] == "tiny_student"
    assert json.loads(meta["config"])["export.include_preprocessing"] is in_graph
    raw, normalised = _raw_val(data)
    fed = raw if in_graph else normalised.numpy()
    with torch.no_grad():
        expected = model(normalised).logits.numpy()
    assert np.abs(session.run(None, {"images": fed})[0] - expected).max() < 1e-3
