"""``orchestrator.predict`` outside the package: real Fashion-MNIST test images as PNGs, the ONNX file alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.export import example_batch, export_one, metadata

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 300

# Runs predict.py as a script with the project's packages, torch, ray and mlflow blocked.
PREDICT_WITHOUT_PACKAGE = r"""
import importlib.abc, runpy, sys
BLOCKED = ("orchestrator", "pipelines", "torch", "torchvision", "ray", "mlflow")
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
sys.path = [p for p in sys.path if p not in ("", sys.argv[1])]
for name in BLOCKED:
    try:
        __import__(name)
        sys.exit(f"{name} is importable")
    except ModuleNotFoundError:
        pass
script, sys.argv = sys.argv[2], sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(folder of N_IMAGES Fashion-MNIST test PNGs named <index>_<label>.png, ONNX file of a briefly trained
    tiny_student with the default export, the same without the normalisation in the graph, the student, its data)."""
    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.data.common import default_data_root
    from orchestrator.data.fashion_mnist import load_fashion_mnist
    from orchestrator.run.alone import train_alone

    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, ["data.dataset=fashion_mnist", "data.train_subset=3000", "data.batch_size=128"])
    data = build_data(cfg.data, cfg.seed)
    model, _ = train_alone(cfg, data, "tiny_student", 2, 0.1, label="student")
    model.eval()
    paths = [export_one(model, "onnx", example_batch(data), tmp / name, metadata(data, in_graph))["path"]
             for name, in_graph in (("student.onnx", True), ("normalised.onnx", False))]
    source = load_fashion_mnist(Path(cfg.data.root) if cfg.data.root else default_data_root())
    folder = tmp / "images"
    folder.mkdir()
    for i in source.test_pool[:N_IMAGES].tolist():
        Image.fromarray(source.images[i, 0].numpy(), mode="L").save(folder / f"{i:05d}_{int(source.labels[i])}.png")
    return folder, Path(paths[0]), Path(paths[1]), model, data


def _labels(folder: Path) -> dict[str, int]:
    return {str(p): int(p.stem.split("_")[1]) for p in sorted(folder.glob("*.png"))}


def _accuracy(stdout: str, labels: dict[str, int], classes: list[str]) -> float:
    """Top-1 accuracy of predict's lines ``path<TAB>class p<TAB>...`` against ``labels``."""
    top1 = {}
    for line in stdout.strip().splitlines():
        path, first, *_ = line.split("\t")
        top1[path] = classes.index(first.rsplit(" ", 1)[0])
    assert set(top1) == set(labels)
    return float(np.mean([top1[p] == y for p, y in labels.items()]))


def test_predict_outside_the_package_matches_the_exported_models_accuracy(exported):
    import onnxruntime

    from orchestrator.data.fashion_mnist import CLASSES

    import torch

    folder, model, _, student, data = exported
    labels = _labels(folder)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pixels = np.stack([np.asarray(Image.open(p), dtype=np.float32)[None] / 255 for p in labels])  # (N, 1, 28, 28)
    truth = np.array(list(labels.values()))
    in_process = float(np.mean(session.run(None, {"images": pixels})[0].argmax(1) == truth))
    with torch.no_grad():  # the PyTorch student on the same images, normalised as in training
        normalised = (torch.from_numpy(pixels) - data.mean[0]) / data.std[0]
        assert float(np.mean(student(normalised).logits.argmax(1).numpy() == truth)) == in_process
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", PREDICT_WITHOUT_PACKAGE, str(REPO),
                           str(REPO / "orchestrator" / "predict.py"), str(model), str(folder), "--top-k", "3"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(line.count("\t") == 3 for line in done.stdout.strip().splitlines())
    accuracy = _accuracy(done.stdout, labels, list(CLASSES))
    assert accuracy == in_process and accuracy > 0.2, (accuracy, in_process)  # chance: 0.1


def test_predict_normalises_when_the_graph_does_not(exported, capsys):
    from orchestrator.predict import main

    folder, with_norm, without_norm, _, _ = exported
    outputs = []
    for model in (with_norm, without_norm):
        assert main([str(model), str(folder), "--top-k", "1"]) == 0
        outputs.append([line.split("\t")[1].rsplit(" ", 1)[0] for line in capsys.readouterr().out.splitlines()])
    assert len(outputs[0]) == N_IMAGES and outputs[0] == outputs[1]


def test_predict_refuses_bad_inputs_with_one_line(exported, tmp_path, capsys):
    from orchestrator.predict import main

    folder, model, *_ = exported
    (tmp_path / "not.onnx").write_bytes(b"junk")
    (tmp_path / "not.png").write_bytes(b"junk")
    for argv, words in (([str(tmp_path / "missing.onnx"), str(folder)], "no such model file"),
                        ([str(tmp_path / "not.onnx"), str(folder)], "not an ONNX model"),
                        ([str(model), str(tmp_path / "missing")], "no such image file or folder"),
                        ([str(model), str(tmp_path / "not.png")], "not an image"),
                        ([str(model), str(folder), "--top-k", "0"], "--top-k")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.count("\n") == 0, err
