"""scikit-learn's 8x8 digits (1,797 images, 10 classes; ships inside the wheel,
so it needs no download). There is no official test split, so a fixed
stratified 20% (seed :data:`TEST_SEED`, never changes with the run's seed) is
the test set and the rest is the training set from which validation is carved.
Pixels are integers 0..16: stored as uint8 with ``scale=16`` so they map to [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from orchestrator.data.common import ImageSource, cached_source
from orchestrator.data.split import stratified_holdout

TEST_FRACTION = 0.2
TEST_SEED = 20240601  # fixed forever: the digits test set must not move between runs


def load_digits_source() -> ImageSource:
    return cached_source(("digits",), _decode)


def _decode() -> ImageSource:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.rint(bunch.images).astype(np.uint8)).unsqueeze(1).contiguous()  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
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
