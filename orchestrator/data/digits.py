"""scikit-learn's 8x8 digits (1,797 images, 10 classes; ships inside the wheel,
so it needs no download). There is no official test split, so a fixed
stratified 20% (seed :data:`TEST_SEED`, never changes with the run's seed) is
the test set and the rest is the training set from which validation is carved.
Pixels are integers 0..16: stored as uint8 with ``scale=16`` so they map to [0, 1]."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from orchestrator.data.common import DatasetNotFoundError, ImageSource, cached_source
from orchestrator.data.split import stratified_holdout

TEST_FRACTION = 0.2
TEST_SEED = 20240601  # fixed forever: the digits test set must not move between runs


def load_digits_source() -> ImageSource:
    return cached_source(("digits",), _decode)


def digits_file() -> Path:
    """The CSV scikit-learn's ``load_digits`` reads (64 pixels then the label per row), found without importing
    scikit-learn (~0.9 s, paid by every Ray process that trains on digits)."""
    spec = importlib.util.find_spec("sklearn")
    where = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    path = where / "datasets" / "data" / "digits.csv.gz" if where else None
    if path is None or not path.is_file():
        raise DatasetNotFoundError("digits", str(path or "scikit-learn's package"), "pip install 'scikit-learn>=1.4'")
    return path


def _decode() -> ImageSource:
    rows = np.loadtxt(digits_file(), delimiter=",")  # (1797, 65)
    images = torch.from_numpy(np.rint(rows[:, :-1]).astype(np.uint8)).reshape(-1, 1, 8, 8).contiguous()  # (1797, 1, 8, 8)
    labels = torch.from_numpy(rows[:, -1].astype(np.int64))
    train_pool, test_pool = stratified_holdout(labels, TEST_FRACTION, TEST_SEED)
    return ImageSource(
        name="digits",
        images=images,
        labels=labels,
        train_pool=train_pool,
        test_pool=test_pool,
        num_classes=10,
        scale=16.0,
        classes=tuple(str(c) for c in range(10)),
    )
