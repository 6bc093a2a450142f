"""orchestrator.data sources: CIFAR pickle dirs, ImageFolder, Fashion-MNIST provisioning, not-found errors.

Every dataset here is written by the test into tmp_path, except the real
Fashion-MNIST test, which needs the Debian package (or an already provisioned
data root) and never the internet.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.config.schema import DataConfig
from orchestrator.data import DatasetNotFoundError, build_data, default_data_root, ensure_fashion_mnist, make_loader
from orchestrator.data import provision
from orchestrator.data.transforms import STATS


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DISTILL_OFFLINE", "1")  # no test may reach the internet


def denormalise(image: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).reshape(-1, 1, 1) for v in STATS[name])
    return ((image * std + mean) * 255).round().to(torch.uint8)


# ----------------------------------------------------------------- CIFAR


def write_cifar(root: Path, variant: str, per_file: int = 6, protocol: int = 2) -> dict[str, np.ndarray]:
    """A tiny CIFAR directory in the real pickle layout; returns the raw train rows."""
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, key, ncls = root / "cifar-10-batches-py", "labels", 10
        train_files, test_files = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    else:
        folder, key, ncls = root / "cifar-100-python", "fine_labels", 100
        train_files, test_files = ["train"], ["test"]
        meta = ("meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": ["x"] * 20})
    folder.mkdir(parents=True)
    rows = []
    for name in train_files + test_files:
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        entry = {"batch_label": name, key: [int(v) for v in rng.integers(0, ncls, per_file)], "data": data}
        if variant == "cifar100":
            entry["coarse_labels"] = [0] * per_file
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=protocol)
        if name in train_files:
            rows.append((data, entry[key]))
    with open(folder / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh, protocol=protocol)
    return {"data": np.concatenate([r[0] for r in rows]), "labels": np.concatenate([r[1] for r in rows])}


@pytest.mark.parametrize("variant,protocol", [("cifar10", 2), ("cifar100", pickle.HIGHEST_PROTOCOL)])
def test_cifar_tiny_directory(tmp_path, variant, protocol):
    raw = write_cifar(tmp_path, variant, protocol=protocol)
    n_train = len(raw["labels"])
    b = build_data(DataConfig(dataset=variant, root=str(tmp_path), val_fraction=0.2), seed=0)
    assert (b.num_classes, b.in_channels, b.image_size) == ((10 if variant == "cifar10" else 100), 3, 32)
    assert len(b.train) + len(b.val) == n_train and len(b.test) == 6
    assert b.classes[1] == ("c1" if variant == "cifar10" else "f1")
    # pixels come back exactly, in the same CHW layout torchvision uses (rows of 1024 R, G, B)
    image, label, index = b.train_eval[2]
    row = int(b.train_eval.source_indices[2])
    expected = torch.from_numpy(raw["data"][row].reshape(3, 32, 32))
    assert torch.equal(denormalise(image, variant), expected)
    assert label == int(raw["labels"][row]) == int(b.train_labels[2]) and index == 2
    # also loads through the augmenting loader
    # root may also name the batches directory itself
    root = tmp_path / "cifar-10-batches-py" if variant == "cifar10" else tmp_path
    b = build_data(DataConfig(dataset=variant, root=str(root), augment=True), 0)
    images, labels, indices = next(iter(make_loader(b.train, 4, shuffle=True, seed=0)))
    assert images.shape == (4, 3, 32, 32) and torch.equal(labels, b.train_labels[indices])


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=2)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": [0]}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        build_data(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)


def test_cifar_reader_reads_python2_style_pickles(tmp_path):
    """The real CIFAR files are Python-2 pickles: arrays via numpy.core.multiarray, data as latin-1 str."""
    from orchestrator.data.cifar import _read_pickle

    array = np.arange(3072 * 2, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)

    class Py2Array:
        def __reduce__(self):
            fn, args, state = array.__reduce__()
            return fn, args, (*state[:4], state[4].decode("latin1"))

    blob = pickle.dumps({b"data": Py2Array(), b"labels": [3, 4]}, protocol=2)
    (tmp_path / "batch").write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    entry = _read_pickle(tmp_path / "batch")
    assert np.array_equal(entry["data"], array) and entry["labels"] == [3, 4]


def test_cifar_missing_directory_explains(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        build_data(DataConfig(dataset="cifar100", root=str(tmp_path)), 0)
    message = str(info.value)
    assert "cifar100" in message and str(tmp_path / "cifar-100-python") in message
    assert "cifar-100-python.tar.gz" in message and "tar xz" in message
    assert isinstance(info.value, FileNotFoundError)


# ----------------------------------------------------------------- ImageFolder


def write_imagefolder(root: Path, per_class: int = 5, size: int = 12, test_dir: str = "test") -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), (test_dir, 2)):
        for cls in ("cat", "dog", "eel"):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                pixels = rng.integers(0, 256, size=(size, size + 2, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{k}.png")


def test_imagefolder_tiny(tmp_path):
    write_imagefolder(tmp_path)
    b = build_data(DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2), 0)
    assert (b.num_classes, b.in_channels, b.image_size, b.classes) == (3, 3, 12, ("cat", "dog", "eel"))
    assert (len(b.train), len(b.val), len(b.test)) == (12, 3, 6)
    assert torch.bincount(b.val.labels).tolist() == [1, 1, 1]
    assert not set(b.train.source_indices.tolist()) & set(b.val.source_indices.tolist())
    image, label, index = b.train_eval[4]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32 and index == 4
    assert label == int(b.train_labels[4])
    images, labels, indices = next(iter(make_loader(b.test, 4, shuffle=False, seed=0)))
    assert images.shape == (4, 3, 12, 12) and torch.equal(labels, b.test.labels[:4])
    aug = build_data(DataConfig(dataset="imagefolder", root=str(tmp_path), augment=True, train_subset=6), 0)
    images, labels, indices = next(iter(make_loader(aug.train, 6, shuffle=True, seed=0)))
    assert images.shape == (6, 3, 12, 12) and torch.equal(labels, aug.train_labels[indices])


def test_imagefolder_val_dir_as_test(tmp_path):
    write_imagefolder(tmp_path, test_dir="val")
    assert len(build_data(DataConfig(dataset="imagefolder", root=str(tmp_path)), 0).test) == 6


def test_imagefolder_missing_explains(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="imagefolder.*train/<class_name>"):
        build_data(DataConfig(dataset="imagefolder", root=str(tmp_path / "nothing")), 0)
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="test"):
        build_data(DataConfig(dataset="imagefolder", root=str(tmp_path / "only")), 0)


# ----------------------------------------------------------------- Fashion-MNIST


def write_idx_gz(folder: Path, n_train: int = 20, n_test: int = 10) -> None:
    """Tiny Fashion-MNIST-format files (IDX, gzipped) with the real names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def test_provision_from_system_dir_then_load(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_idx_gz(system)
    root = tmp_path / "root"
    assert ensure_fashion_mnist(root, system_dir=system) == root.resolve()
    raw = provision.fashion_mnist_raw_dir(root)
    assert sorted(p.name for p in raw.iterdir()) == sorted(provision.FASHION_MNIST_FILES)
    b = build_data(DataConfig(dataset="fashion_mnist", root=str(root), val_fraction=0.1), 0)
    assert (len(b.train), len(b.val), len(b.test), b.image_size, b.in_channels) == (18, 2, 10, 28, 1)
    # the CLI, through the environment variable naming the system directory
    monkeypatch.setenv(provision.SYSTEM_DIR_ENV, str(system))
    assert provision.main(["--root", str(tmp_path / "cli"), "--no-download"]) == 0
    assert (provision.fashion_mnist_raw_dir(tmp_path / "cli") / "t10k-labels-idx1-ubyte").is_file()


def test_provision_from_gz_dropped_in_raw(tmp_path):
    write_idx_gz(provision.fashion_mnist_raw_dir(tmp_path))
    ensure_fashion_mnist(tmp_path, system_dir=tmp_path / "none", download=False)
    assert (provision.fashion_mnist_raw_dir(tmp_path) / "train-images-idx3-ubyte").stat().st_size == 16 + 20 * 784


def test_fashion_mnist_missing_explains(tmp_path, capsys, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as info:
        ensure_fashion_mnist(tmp_path, system_dir=tmp_path / "none", download=False)
    message = str(info.value)
    assert "fashion_mnist" in message and "apt-get install dataset-fashion-mnist" in message
    assert str(provision.fashion_mnist_raw_dir(tmp_path.resolve())) in message
    assert "internet" in message
    monkeypatch.setenv(provision.SYSTEM_DIR_ENV, str(tmp_path / "none"))
    with pytest.raises(DatasetNotFoundError):  # DISTILL_OFFLINE is set: no download attempted
        build_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path)), 0)
    assert provision.main(["--root", str(tmp_path)]) == 1
    assert "dataset-fashion-mnist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fashion_mnist_root(tmp_path_factory) -> Path:
    for root in (default_data_root(),):
        if all((provision.fashion_mnist_raw_dir(root) / f).is_file() for f in provision.FASHION_MNIST_FILES):
            return root
    if not all((provision.SYSTEM_DIR / f"{f}.gz").is_file() for f in provision.FASHION_MNIST_FILES):
        pytest.skip(
            f"Fashion-MNIST not available offline: neither {provision.SYSTEM_DIR} (apt-get install "
            f"dataset-fashion-mnist) nor a provisioned {provision.fashion_mnist_raw_dir(default_data_root())}"
        )
    root = tmp_path_factory.mktemp("fmnist")
    return ensure_fashion_mnist(root, download=False)


def test_real_fashion_mnist_offline(fashion_mnist_root):
    b = build_data(DataConfig(dataset="fashion_mnist", root=str(fashion_mnist_root)), 0)
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert (b.num_classes, b.in_channels, b.image_size, b.classes[9]) == (10, 1, 28, "Ankle boot")
    assert torch.bincount(b.val.labels).tolist() == [600] * 10
    images, labels, indices = next(iter(make_loader(b.train, 128, shuffle=True, seed=0)))
    assert images.shape == (128, 1, 28, 28) and torch.equal(labels, b.train_labels[indices])
    cfg = DataConfig(dataset="fashion_mnist", root=str(fashion_mnist_root), train_subset=1000, augment=True)
    sub = build_data(cfg, 0)
    assert len(sub.train) == 1000 and torch.equal(sub.val.source_indices, b.val.source_indices)
    assert sub.train.source.images is b.train.source.images  # decoded once per process
