"""ImageFolder datasets: ``<root>/train/<class>/*.png`` plus ``<root>/test/`` (or
``<root>/val/``) with the same class folders, read per sample with PIL through
``torchvision.datasets.ImageFolder`` (images are converted to RGB).

``data.root`` names ``<root>``; when it is unset, ``<default data root>/imagefolder``.
The validation split is carved from ``train/``; ``test/`` (else ``val/``) is the
test set. Every image becomes S x S with S = ``data.image_size`` (unset: the
shorter side of the first training image), as ``data.resize`` says
(:data:`~orchestrator.data.transforms.RESIZE_POLICIES`; default: shorter side
resized to S, then centre-cropped); with ``data.augment`` the training images
are RandomResizedCrop'ed to S and flipped instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from orchestrator.data.bundle import DataBundle
from orchestrator.data.common import DatasetNotFoundError, default_data_root
from orchestrator.data.split import carve_validation, hide_labels, take_subset
from orchestrator.data.transforms import DEFAULT_RESIZE, STATS, imagefolder_transforms

TEST_DIRS = ("test", "val")


class _FolderWithClasses(ImageFolder):
    """An ImageFolder whose class list is imposed (the training set's), so labels agree."""

    def __init__(self, root: str, classes: list[str]):
        self._imposed = list(classes)
        super().__init__(root, allow_empty=True)

    def find_classes(self, directory):
        present = sorted(p.name for p in Path(directory).iterdir() if p.is_dir())
        unknown = [c for c in present if c not in self._imposed]
        if unknown:
            raise ValueError(f"{directory} has class folders {unknown} that train/ does not have")
        return self._imposed, {c: i for i, c in enumerate(self._imposed)}


class TransformedSubset(Dataset):
    """Items ``(transform(image), labels[source_indices[i]], i)`` of ``base[source_indices[i]]`` (per sample;
    ImageFolder); ``labels`` are the base's, some possibly hidden (UNLABELLED)."""

    def __init__(self, base: Dataset, source_indices: torch.Tensor, labels: torch.Tensor, transform: Callable | None):
        self.base = base
        self.source_indices = torch.as_tensor(source_indices, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)[self.source_indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source_indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n}")
        i %= n
        image, _ = self.base[int(self.source_indices[i])]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i]), i


def imagefolder_root(cfg) -> Path:
    root = getattr(cfg, "root", None)
    return (Path(root).expanduser() if root else default_data_root() / "imagefolder").resolve()


def _how_to(root: Path) -> str:
    return (
        f"create {root}/train/<class_name>/<image files> and {root}/test/<class_name>/<image files> "
        "(or val/ instead of test/), with the same class folder names, and set data.root to that directory"
    )


def build_imagefolder(cfg, seed: int) -> DataBundle:
    root = imagefolder_root(cfg)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetNotFoundError("imagefolder", train_dir, _how_to(root))
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if test_dir is None:
        raise DatasetNotFoundError("imagefolder", [root / d for d in TEST_DIRS], _how_to(root))
    try:
        base_train = ImageFolder(str(train_dir))
    except FileNotFoundError as exc:
        raise DatasetNotFoundError("imagefolder", train_dir, f"{_how_to(root)} ({exc})") from exc
    base_test = _FolderWithClasses(str(test_dir), base_train.classes)
    if len(base_test) == 0:
        raise DatasetNotFoundError("imagefolder", test_dir, _how_to(root) + " (the test folder has no images)")

    image_size = getattr(cfg, "image_size", None)
    if not image_size:
        with Image.open(base_train.samples[0][0]) as first:
            image_size = min(first.size)
    resize = getattr(cfg, "resize", DEFAULT_RESIZE)
    train_tf, eval_tf = imagefolder_transforms(int(image_size), bool(getattr(cfg, "augment", False)), resize)

    labels = torch.tensor(base_train.targets, dtype=torch.long)
    pool = torch.arange(len(labels))
    train_idx, val_idx = carve_validation(pool, labels, float(getattr(cfg, "val_fraction", 0.1)), seed)
    train_idx = take_subset(train_idx, labels, getattr(cfg, "train_subset", None), seed)
    test_labels = torch.tensor(base_test.targets, dtype=torch.long)
    seen = hide_labels(labels, train_idx, float(getattr(cfg, "labeled_fraction", 1.0)), seed)
    train = TransformedSubset(base_train, train_idx, seen, train_tf)
    mean, std = STATS["imagefolder"]
    return DataBundle(
        train=train,
        train_eval=TransformedSubset(base_train, train_idx, seen, eval_tf),
        val=TransformedSubset(base_train, val_idx, labels, eval_tf),
        test=TransformedSubset(base_test, torch.arange(len(test_labels)), test_labels, eval_tf),
        num_classes=len(base_train.classes),
        in_channels=3,
        image_size=int(image_size),
        resize=resize,
        train_labels=train.labels.clone(),
        name="imagefolder",
        classes=tuple(base_train.classes),
        mean=mean,
        std=std,
    )
