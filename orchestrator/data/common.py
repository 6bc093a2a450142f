"""Shared pieces of the data package: where data lives, the not-found error,
and the in-memory image source with its per-process cache.

Data root
---------
:func:`default_data_root` is ``$DISTILL_DATA_ROOT`` when set, otherwise
``~/.cache/distill-orchestrator/data``. A per-user cache directory (rather
than a path relative to the working directory) lets every sweep, test and Ray
worker on a machine share one copy of the data whatever directory it runs
from; ``$DISTILL_DATA_ROOT`` (or ``data.root`` in the config) points a cluster
at a shared filesystem.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_ROOT_ENV = "DISTILL_DATA_ROOT"


def default_data_root() -> Path:
    """``$DISTILL_DATA_ROOT`` if set, else ``~/.cache/distill-orchestrator/data`` (see module doc)."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "distill-orchestrator" / "data"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root`` made absolute, or the default data root when it is None/empty."""
    return (Path(root).expanduser() if root else default_data_root()).resolve()


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing. The message says which dataset, where we
    looked and exactly how to get it."""

    def __init__(self, dataset: str, looked_in: str | os.PathLike | list, how_to_get: str):
        places = looked_in if isinstance(looked_in, list) else [looked_in]
        self.dataset = dataset
        self.looked_in = [str(p) for p in places]
        self.how_to_get = how_to_get
        where = ", ".join(self.looked_in)
        super().__init__(f"dataset '{dataset}' not found (looked in: {where}). How to get it: {how_to_get}")

    def __reduce__(self):
        """Re-created from its fields, so it crosses process boundaries (Ray workers) intact."""
        return self.__class__, (self.dataset, self.looked_in, self.how_to_get)


@dataclass(frozen=True)
class ImageSource:
    """A whole dataset decoded once into memory.

    images:     (M, C, H, W) uint8, raw pixels (value / ``scale`` is in [0, 1])
    labels:     (M,) int64
    train_pool: indices of ``images`` forming the official training set
    test_pool:  indices of ``images`` forming the official test set (disjoint from train_pool)
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    train_pool: torch.Tensor
    test_pool: torch.Tensor
    num_classes: int
    scale: float = 255.0
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            shape = tuple(self.images.shape)
            raise ValueError(f"images must be a (M, C, H, W) uint8 tensor, got {self.images.dtype} {shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be (M,) matching images")


_CACHE: dict[tuple, ImageSource] = {}
_CACHE_LOCK = threading.Lock()


def cached_source(key: tuple, load: Callable[[], ImageSource]) -> ImageSource:
    """Load an :class:`ImageSource` once per process (keyed by ``key``)."""
    with _CACHE_LOCK:
        source = _CACHE.get(key)
        if source is None:
            source = load()
            _CACHE[key] = source
        return source


def clear_cache() -> None:
    """Forget every cached source (tests; freeing memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
