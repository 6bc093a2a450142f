"""Your own data: a folder of JPEGs of several sizes, ``data.image_size`` and ``data.resize``, from the config
through the teacher (pipelines.teachers), a confirmed sweep, export and predict (docs/YOUR_DATA.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from orchestrator import predict
from orchestrator.config.schema import ConfigError, DataConfig, load_config
from orchestrator.data import build_data
from orchestrator.data.transforms import RESIZE_POLICIES, fit_to_size

CLASSES = ("red", "green", "blue")
SIZES = ((40, 30), (50, 50), (30, 44))  # (width, height) of the originals, cycled over the files


def write_jpeg_folder(root: Path, train_per_class: int = 8, test_per_class: int = 3) -> None:
    """``root/{train,test}/<class>/*.jpg``: RGB JPEGs of the sizes in SIZES, each class a dominant colour plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                width, height = SIZES[k % len(SIZES)]
                pixels = rng.integers(0, 90, size=(height, width, 3))
                pixels[..., c] += 150
                Image.fromarray(pixels.astype(np.uint8), "RGB").save(root / split / name / f"{k}.jpg", quality=90)


def test_image_size_and_resize_are_validated_naming_the_key():
    for overrides, key in ((["data.image_size=64"], "data.image_size"),  # fashion_mnist is 28x28
                           (["data.dataset=imagefolder", "data.image_size=4"], "data.image_size"),
                           (["data.dataset=imagefolder", "data.resize=stretch"], "data.resize")):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            load_config(None, overrides)
    assert load_config(None, ["data.dataset=digits", "data.image_size=8"]).data.image_size == 8


def test_sweep_cli_refuses_a_bad_image_size_with_exit_2(capsys):
    from orchestrator.sweep.cli import main

    assert main(["--dry-run", "data.dataset=imagefolder", "data.image_size=0"]) == 2
    assert "data.image_size" in capsys.readouterr().err


def test_cache_keys_follow_the_image_size_and_resize():
    """A teacher or its outputs at one size are never reused at another; configs that set neither key keep
    the keys they had."""
    from orchestrator.teacher_outputs import data_key
    from orchestrator.run.alone import training_key

    configs = [load_config(None, ["data.dataset=imagefolder", *extra])
               for extra in ([], ["data.image_size=32"], ["data.image_size=64"], ["data.resize=center_crop"])]
    assert configs[0].data.geometry_key() == {} and configs[1].data.geometry_key() == {"image_size": 32}
    assert len({training_key(c, "tiny_teacher", 1, 0.1) for c in configs}) == len(configs)
    assert len({data_key(c) for c in configs}) == len(configs)


@pytest.mark.parametrize("resize", list(RESIZE_POLICIES))
def test_imagefolder_honours_image_size_and_resize(tmp_path, resize):
    write_jpeg_folder(tmp_path)
    data = build_data(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=32, resize=resize), 0)
    assert (data.image_size, data.resize, data.in_channels, data.classes) == (32, resize, 3, tuple(sorted(CLASSES)))
    for split in (data.train, data.val, data.test):
        assert split[0][0].shape == (3, 32, 32)
    # the unset size is the shorter side of the first training image (blue/0.jpg: 40x30)
    assert build_data(DataConfig(dataset="imagefolder", root=str(tmp_path)), 0).image_size == 30


@pytest.mark.parametrize("resize", list(RESIZE_POLICIES))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_predict_fits_images_exactly_as_training_did(resize, mode):
    """predict's Pillow-only resizing equals the evaluation transform pixel for pixel, for every policy and shape."""
    rng = np.random.default_rng(1)
    for width, height in ((40, 30), (30, 40), (50, 50), (20, 12), (33, 100), (32, 32), (7, 9)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
        expected = np.asarray(v2.Compose(fit_to_size(32, resize))(image))
        assert np.array_equal(np.asarray(predict.fit_image(image, 32, resize)), expected), (width, height)


@pytest.mark.slow
def test_jpeg_folder_from_teacher_to_confirmed_sweep_export_and_predict(ray_session, isolated_cache, tmp_path, sqlite_store,
                                                                        monkeypatch, capsys):
    from orchestrator.export import main as export_main
    from orchestrator.sweep.cli import main as sweep_main
    from orchestrator.teacher.checkpoint import TeacherCheckpointError, load_teacher
    from pipelines.teachers import main as teachers_main

    monkeypatch.chdir(tmp_path)
    photos, uri = tmp_path / "photos", f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_jpeg_folder(photos)
    (tmp_path / "photos.yaml").write_text(  # the data keys both commands share, as docs/YOUR_DATA.md writes them
        f"data:\n  dataset: imagefolder\n  root: {photos}\n  image_size: 32\n  resize: resize_then_center_crop\n"
        "  val_fraction: 0.25\n  batch_size: 8\n")
    data_keys = ["--config", str(tmp_path / "photos.yaml")]

    # 1. The teacher, trained by pipelines.teachers at 32x32.
    assert teachers_main([*data_keys, "pipeline.teachers=[tiny_teacher:0]", "teacher.epochs=1",
                          "--tracking-uri", uri, "--output-dir", str(tmp_path / "teachers")]) == 0
    out = capsys.readouterr().out
    teacher = next(line.split()[-1] for line in out.splitlines() if "runs:/" in line)  # runs:/<id>/teacher
    (teacher_file,) = (isolated_cache / "teachers").glob("imagefolder-tiny_teacher-*.pt")
    assert torch.load(teacher_file, weights_only=True)["image_size"] == 32
    with pytest.raises(TeacherCheckpointError, match="trained on 32x32 images"):  # a teacher is used only at its own size
        load_teacher(str(teacher_file), 3, 3, image_size=48)

    # 2. A tiny confirmed sweep distilling it (KD: CRD needs more training images than its K negatives).
    assert sweep_main(["--name", "photos", "--num-samples", "1", "--storage-path", str(tmp_path / "runs"),
                       "--tracking-uri", uri, *data_keys, f"teacher.checkpoint={teacher}", "model.teacher=tiny_teacher",
                       "model.student=tiny_student", "sweep.search_space=kd", "train.epochs=2",
                       "sweep.confirm.top_k=1", "sweep.confirm.seeds=2", "sweep.max_concurrent=1"]) == 0
    out = capsys.readouterr().out
    assert "Result: re-trained on fresh seeds" in out
    exp_dir = next((tmp_path / "runs").glob("photos-*"))
    assert json.loads((exp_dir / "summary.json").read_text())["confirmed"] is True
    assert torch.load(exp_dir / "best_student.pt", weights_only=True)["image_size"] == 32

    # 3. Export: the sweep's own ONNX file, and the export command on its checkpoint, both take 3x32x32.
    cli_onnx = tmp_path / "mine.onnx"
    assert export_main([str(exp_dir / "best_student.pt"), "--data-root", str(photos), "--out", str(cli_onnx)]) == 0
    for path in (exp_dir / "export" / "student.onnx", cli_onnx):
        model = onnx.load(str(path))
        dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims[1:] == [3, 32, 32], dims
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["input_size"]) == [3, 32, 32] and meta["resize"] == "resize_then_center_crop"
        assert json.loads(meta["class_names"]) == sorted(CLASSES) and meta["channel_order"] == "RGB"

    capsys.readouterr()

    # 4. Predict on the original JPEGs (40x30, 50x50, 30x44): the probabilities of the test set as the
    # evaluation pipeline fed it (raw [0, 1] pixels: the graph normalises), so the sizes agree end to end.
    session, meta = predict.open_model(cli_onnx)
    data = build_data(DataConfig(dataset="imagefolder", root=str(photos), image_size=32), 0)
    files = [Path(path) for path, _ in data.test.base.samples]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.mean, data.std))
    raw = torch.stack([data.test[i][0] for i in range(len(data.test))]) * std + mean
    logits = session.run(None, {"images": raw.numpy()})[0]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(predict.probabilities(session, meta, files), expected / expected.sum(1, keepdims=True),
                               atol=1e-5)
    assert predict.main([str(cli_onnx), str(photos / "test" / "red"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 3 for line in lines)
