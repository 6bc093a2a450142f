"""DataLoaders: seeded, epoch-aware shuffling on one process or many (DDP).

Batches are ``(images (B, C, H, W) float, labels (B,) long, indices (B,) long)``.
Call :func:`set_epoch` before each epoch: the order is a function of
``(seed, epoch)`` only, like ``DistributedSampler`` (which is used when
``world_size > 1``); so are the views of an augmenting in-memory dataset
(:mod:`orchestrator.data.views`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torch.utils.data._utils.collate import default_collate

from orchestrator.data.datasets import SampleBatch
from orchestrator.data.views import ViewKey


class SeededSampler(Sampler[int]):
    """Single-process sampler: ``randperm(n)`` from ``seed + epoch`` (shuffle) or ``0..n-1``."""

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int):
        self.num_samples = len(dataset)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())

    def __len__(self) -> int:
        return self.num_samples


class PooledSampler(Sampler[int]):
    """``len(dataset)`` indices per epoch drawn from ``pool`` only: shuffled permutations of the pool (from
    ``seed + epoch``) laid end to end, rank ``r`` of ``world_size`` taking every ``world_size``-th one.

    For training on a subset (e.g. the labelled images when no objective term reads the others) with as many
    steps per epoch as on the whole split, so that runs with and without the subset get the same compute.
    """

    def __init__(self, dataset: Dataset, pool: torch.Tensor, *, seed: int, rank: int = 0, world_size: int = 1):
        if len(pool) == 0:
            raise ValueError("the pool of indices to draw from is empty")
        self.pool = torch.as_tensor(pool, dtype=torch.long)
        self.total = -(-len(dataset) // world_size) * world_size  # padded to a multiple of world_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        rounds = -(-self.total // len(self.pool))
        order = torch.cat([self.pool[torch.randperm(len(self.pool), generator=gen)] for _ in range(rounds)])
        return iter(order[: self.total][self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.total // self.world_size


class ViewKeys(Sampler):
    """The wrapped sampler's indices as ``ViewKey(seed, epoch, index)``: what an augmenting dataset needs to
    draw each sample's view from its key alone (in the main process or a worker, at any batch size)."""

    def __init__(self, sampler: Sampler, seed: int):
        self.sampler, self.seed = sampler, int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[ViewKey]:
        epoch = int(self.sampler.epoch)
        return (ViewKey(self.seed, epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def collate(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(image, label, index)`` samples; an already stacked :class:`SampleBatch` passes through."""
    if isinstance(batch, SampleBatch):
        return batch.tensors()
    images, labels, indices = default_collate(list(batch))
    return images, torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(indices, dtype=torch.long)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    pool: torch.Tensor | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` (items ``(image, label, index)``).

    ``world_size > 1``: a ``DistributedSampler(num_replicas=world_size, rank=rank,
    shuffle=shuffle, seed=seed, drop_last=drop_last)``; note that without
    ``drop_last`` it pads the set with repeated samples up to a multiple of
    ``world_size``. Otherwise a :class:`SeededSampler`. With ``pool`` (shuffled training only): a
    :class:`PooledSampler` drawing ``len(dataset)`` samples per epoch from those indices. Either way call
    :func:`set_epoch` each epoch. An augmenting in-memory dataset gets
    ``ViewKey(seed, epoch, index)`` s (:class:`ViewKeys`): its views depend on
    ``seed``, the epoch and each index only, never on the torch RNG, the worker
    or the batch. ``pin_memory`` (extra, default
    False) is passed to the DataLoader for faster host-to-GPU copies.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if pool is not None:
        if not shuffle:
            raise ValueError("a pool of indices is for shuffled training only")
        sampler: Sampler = PooledSampler(dataset, pool, seed=seed, rank=rank, world_size=world_size)
    elif world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
    else:
        sampler = SeededSampler(dataset, shuffle=shuffle, seed=seed)
    if getattr(dataset, "keyed_views", False):
        sampler = ViewKeys(sampler, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the loader's sampler (whatever it is) which epoch starts; no-op if it has no epochs."""
    for sampler in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return
