"""Fashion-MNIST (the default dataset): 60,000 train + 10,000 test 28x28 greyscale
images, 10 classes, decoded once into one uint8 tensor (see :mod:`.provision`
for how the files get there)."""

from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.data.common import ImageSource, cached_source
from orchestrator.data.provision import ensure_fashion_mnist

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def load_fashion_mnist(root: Path) -> ImageSource:
    """Provision (if needed) and decode Fashion-MNIST under ``root``; cached per process."""
    root = ensure_fashion_mnist(root)
    return cached_source(("fashion_mnist", str(root)), lambda: _decode(root))


def _decode(root: Path) -> ImageSource:
    from torchvision.datasets import FashionMNIST

    train = FashionMNIST(str(root), train=True, download=False)
    test = FashionMNIST(str(root), train=False, download=False)
    images = torch.cat([train.data, test.data]).unsqueeze(1).contiguous()  # (70000, 1, 28, 28) uint8
    labels = torch.cat([train.targets, test.targets]).long()
    n_train = len(train.data)
    return ImageSource(
        name="fashion_mnist",
        images=images,
        labels=labels,
        train_pool=torch.arange(n_train),
        test_pool=torch.arange(n_train, len(images)),
        num_classes=10,
        classes=CLASSES,
    )
