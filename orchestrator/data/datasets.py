"""Datasets whose items are ``(image, label, index)`` and :func:`build_data`.

``index`` is the item's position in its dataset (0..len-1): for ``train`` it is
the CRD memory-bank row, identical in ``train`` and ``train_eval``. Every
dataset also exposes ``labels`` (LongTensor, index order) and
``source_indices`` (positions in the underlying source, used to check that
train/val/test never overlap).

With ``data.labeled_fraction`` < 1 only a stratified, seeded fraction of the
training split keeps its labels: the others read ``UNLABELLED`` (-1) in
``train``, ``train_eval`` and ``train_labels``, so nothing downstream can use
them (CE and the other label-reading terms skip those rows; label-free terms
see every image). Validation and test keep all their labels.

In-memory datasets (Fashion-MNIST, digits, CIFAR) index one shared uint8
tensor and implement ``__getitems__``, which the DataLoader calls with a whole
batch of indices: gather, crop/flip and normalise happen once per batch. An
augmenting one gets :class:`~orchestrator.data.views.ViewKey` s from the loader:
each sample's crop/flip is a function of (seed, epoch, index) alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from orchestrator.data import views
from orchestrator.data.bundle import DataBundle
from orchestrator.data.common import ImageSource, resolve_root
from orchestrator.data.split import carve_validation, hide_labels, take_subset
from orchestrator.data.transforms import DEFAULT_RESIZE, IN_MEMORY_AUGMENT, STATS, CropFlip

IN_MEMORY = ("fashion_mnist", "digits", "cifar10", "cifar100")


class SampleBatch(Sequence):
    """What ``__getitems__`` returns: a batch already stacked, that still reads as a
    list of ``(image, label, index)`` samples (so torch's default_collate and
    ``Subset`` keep working); :func:`orchestrator.data.loaders.collate` takes the
    tensors as they are."""

    __slots__ = ("images", "labels", "indices")

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        self.images, self.labels, self.indices = images, labels, indices

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        return self.images[k], int(self.labels[k]), int(self.indices[k])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images, self.labels, self.indices


class InMemoryDataset(Dataset):
    """Items ``source.images[source_indices[i]]`` normalised, optionally cropped/flipped.

    ``dataset[i]`` uses the per-sample ``transforms.v2`` pipeline, the
    DataLoader the vectorised batch kernel (same distribution). ``labels``: the
    whole source's labels to read (default ``source.labels``; e.g. some hidden)."""

    def __init__(self, source: ImageSource, source_indices: torch.Tensor, *, augment: CropFlip | None, mean, std,
                 labels: torch.Tensor | None = None):
        self.source = source
        self.source_indices = torch.as_tensor(source_indices, dtype=torch.long)
        self.labels = (source.labels if labels is None else labels)[self.source_indices]
        self.augment = augment
        self._per_sample = augment.per_sample() if augment is not None else None
        channels = source.images.shape[1]
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1)
        # (x / scale - mean) / std == x * a + b
        self._a = 1.0 / (source.scale * std_t)
        self._b = -mean_t / std_t

    def __len__(self) -> int:
        return len(self.source_indices)

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._b, raw.float(), self._a)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n}")
        i %= n
        raw = self.source.images[self.source_indices[i]]
        if self._per_sample is not None:
            raw = self._per_sample(raw)
        return self._normalise(raw[None])[0], int(self.labels[i]), i

    @property
    def keyed_views(self) -> bool:
        """Whether the loader should hand this dataset :class:`~orchestrator.data.views.ViewKey` s (it augments)."""
        return self.augment is not None

    def __getitems__(self, positions: list) -> SampleBatch:
        """A batch of ``positions`` (ints), or of ``ViewKey`` s: each sample then cropped/flipped as its key says."""
        if positions and isinstance(positions[0], tuple):
            seeds, epochs, pos = views.key_arrays(positions)
            return SampleBatch(self._views(seeds, epochs, pos), self.labels[pos], pos)
        pos = self._checked(positions)
        raw = self.source.images.index_select(0, self.source_indices[pos])
        if self.augment is not None:
            raw = self.augment.batch(raw)
        return SampleBatch(self._normalise(raw), self.labels[pos], pos)

    def view_images(self, seed: int, epoch: int, positions, view: int = 0) -> torch.Tensor:
        """The normalised views (B, C, S, S) of samples ``positions`` (B,) in epoch ``epoch`` of stream ``seed``:
        with ``view`` 0 what the training loader gives for them (and what a teacher view cache is computed
        on); ``view`` 1 a second augmentation of the same images (the Learner's, for terms that want two)."""
        return self._views(seed, epoch, positions, view)

    def _views(self, seeds, epochs, pos: torch.Tensor, view: int = 0) -> torch.Tensor:
        if self.augment is None:
            raise ValueError("this dataset does not augment: it has no views")
        pos = self._checked(pos)
        raw = self.source.images.index_select(0, self.source_indices[pos])
        params = self.augment.view_params(seeds, epochs, pos.numpy(), view)
        return self._normalise(self.augment.apply_params(raw, *params))

    def _checked(self, positions) -> torch.Tensor:
        pos = torch.as_tensor(positions, dtype=torch.long)
        if pos.numel() and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"batch indices out of range for a dataset of {len(self)}")
        return pos


def load_source(name: str, root) -> ImageSource:
    """The decoded, per-process-cached source of an in-memory dataset."""
    if name == "fashion_mnist":
        from orchestrator.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(resolve_root(root))
    if name == "digits":
        from orchestrator.data.digits import load_digits_source

        return load_digits_source()
    if name in ("cifar10", "cifar100"):
        from orchestrator.data.cifar import load_cifar

        return load_cifar(resolve_root(root), name)
    raise ValueError(f"unknown in-memory dataset {name!r}; known: {list(IN_MEMORY)}")


def build_data(cfg, seed: int) -> DataBundle:
    """Build train / train_eval / val / test for ``cfg`` (a ``DataConfig``).

    The validation split depends only on ``seed`` (not on ``train_subset``):
    pass the sweep's seed, not a per-trial seed, if all trials must be scored
    on the same validation images."""
    name = cfg.dataset
    val_fraction = float(getattr(cfg, "val_fraction", 0.1))
    subset = getattr(cfg, "train_subset", None)
    augment = bool(getattr(cfg, "augment", False))
    if name == "imagefolder":
        from orchestrator.data.imagefolder import build_imagefolder

        return build_imagefolder(cfg, seed)
    source = load_source(name, getattr(cfg, "root", None))
    train_idx, val_idx = carve_validation(source.train_pool, source.labels, val_fraction, seed)
    train_idx = take_subset(train_idx, source.labels, subset, seed)
    seen = hide_labels(source.labels, train_idx, float(getattr(cfg, "labeled_fraction", 1.0)), seed)
    mean, std = STATS[name]
    plain = dict(augment=None, mean=mean, std=std)
    train = InMemoryDataset(source, train_idx, augment=IN_MEMORY_AUGMENT[name] if augment else None, mean=mean, std=std,
                            labels=seen)
    _, channels, height, _ = source.images.shape
    return DataBundle(
        train=train,
        train_eval=InMemoryDataset(source, train_idx, **plain, labels=seen),
        val=InMemoryDataset(source, val_idx, **plain),
        test=InMemoryDataset(source, source.test_pool, **plain),
        num_classes=source.num_classes,
        in_channels=channels,
        image_size=height,
        train_labels=train.labels.clone(),
        name=name,
        classes=source.classes,
        mean=mean,
        std=std,
        resize=getattr(cfg, "resize", DEFAULT_RESIZE),
    )
