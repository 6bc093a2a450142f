"""CIFAR-10 / CIFAR-100 from a local directory in the standard python-pickle layout::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

(``root`` may also be that directory itself). The files are read with a small
reader that follows torchvision's CIFAR10/CIFAR100 layout exactly (same keys,
same reshaping) but through a restricted unpickler that only rebuilds numpy
arrays and plain containers (a downloaded pickle cannot run code) and without
torchvision's md5 pass over 170 MB on every start. Nothing is downloaded:
a missing directory raises :class:`DatasetNotFoundError` with instructions.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.common import DatasetNotFoundError, ImageSource, cached_source

LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "num_classes": 10,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "num_classes": 100,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle file")


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        entry = _SafeUnpickler(fh, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict, got {type(entry).__name__}")
    # Python-2 pickles may carry bytes keys
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def cifar_dir(root: Path, variant: str) -> Path:
    """The batches directory for ``variant`` under ``root`` (or ``root`` itself when it is one)."""
    layout = LAYOUTS[variant]
    first = layout["train"][0]
    candidates = [Path(root) / layout["folder"], Path(root)]
    for cand in candidates:
        if all((cand / f).is_file() for f in layout["train"] + layout["test"]):
            return cand
    missing_in = candidates[0]
    raise DatasetNotFoundError(
        variant,
        [str(c) for c in candidates],
        f"download {layout['url']} and extract it into {root} (so that {missing_in / first} exists), "
        f"e.g. `mkdir -p {root} && curl -L {layout['url']} | tar xz -C {root}`; "
        "or set data.root / $DISTILL_DATA_ROOT to the directory that holds "
        f"'{layout['folder']}/'. Nothing is downloaded automatically.",
    )


def load_cifar(root: Path, variant: str) -> ImageSource:
    """Decode CIFAR-10 (``variant='cifar10'``) or CIFAR-100 (``'cifar100'``); cached per process."""
    if variant not in LAYOUTS:
        raise ValueError(f"unknown CIFAR variant {variant!r}; known: {sorted(LAYOUTS)}")
    folder = cifar_dir(Path(root), variant)
    return cached_source((variant, str(folder.resolve())), lambda: _decode(folder, variant))


def _read_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, list[int]]:
    data, labels = [], []
    for name in files:
        entry = _read_pickle(folder / name)
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(int(v) for v in entry[label_key])
    images = np.vstack(data).reshape(-1, 3, 32, 32)  # stored CHW row-major, like torchvision
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _decode(folder: Path, variant: str) -> ImageSource:
    layout = LAYOUTS[variant]
    train_x, train_y = _read_split(folder, layout["train"], layout["label_key"])
    test_x, test_y = _read_split(folder, layout["test"], layout["label_key"])
    meta_file, meta_key = layout["meta"]
    classes: tuple[str, ...] = tuple(str(c) for c in range(layout["num_classes"]))
    if (folder / meta_file).is_file():
        names = _read_pickle(folder / meta_file).get(meta_key)
        if names is not None and len(names) == layout["num_classes"]:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    images = torch.from_numpy(np.concatenate([train_x, test_x])).contiguous()
    labels = torch.tensor(train_y + test_y, dtype=torch.long)
    n_train = len(train_x)
    return ImageSource(
        name=variant,
        images=images,
        labels=labels,
        train_pool=torch.arange(n_train),
        test_pool=torch.arange(n_train, len(images)),
        num_classes=layout["num_classes"],
        classes=classes,
    )
