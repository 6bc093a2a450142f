"""Seeded, stratified selection: the validation split, the training subset and its labelled part.

Both are pure functions of (labels, size, seed), so the same seed gives the same
split in every process. Stratified means each class contributes (up to
rounding) the same fraction, and the total size is exact.
"""

from __future__ import annotations

import hashlib

import torch

UNLABELLED = -1  # the label of a training sample whose label is hidden (data.labeled_fraction < 1)


def derive_seed(seed: int, tag: str) -> int:
    """A stable 63-bit seed for one purpose (``tag``) derived from the run seed."""
    digest = hashlib.sha256(f"{int(seed)}:{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stratified_sample(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Positions (sorted, int64) of ``n`` of ``labels``' entries, drawn per class in proportion.

    Draws a seeded permutation, gives every sample the key
    ``(rank within its class + 0.5) / class size`` and keeps the ``n`` smallest
    keys: each class gets its share of ``n`` up to one sample.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    total = labels.numel()
    if not 0 <= n <= total:
        raise ValueError(f"cannot draw {n} samples from {total}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(total, generator=gen)
    lab = labels[perm]
    lab = lab - lab.min() if total else lab
    counts = torch.bincount(lab)
    order = torch.argsort(lab, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(total, dtype=torch.long)
    rank[order] = torch.arange(total) - starts[lab[order]]
    key = (rank.double() + 0.5) / counts[lab].double()
    chosen = perm[torch.argsort(key, stable=True)[:n]]
    return torch.sort(chosen).values


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions ``0..len(labels)-1`` into ``(kept, held_out)`` (both sorted).

    ``held_out`` has ``round(fraction * N)`` entries, at least 1 and at most N-1
    when N >= 2, so neither side is ever empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    total = len(labels)
    n_held = int(round(fraction * total))
    if total >= 2:
        n_held = min(max(n_held, 1), total - 1)
    held = stratified_sample(labels, n_held, seed)
    mask = torch.ones(total, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def carve_validation(
    pool: torch.Tensor, labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a training pool (indices into a source) into ``(train, val)`` index tensors.

    ``labels`` are the labels of the whole source (indexed by ``pool``)."""
    kept, held = stratified_holdout(labels[pool], val_fraction, derive_seed(seed, "val"))
    return pool[kept], pool[held]


def hide_labels(labels: torch.Tensor, pool: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A copy of ``labels`` (the whole source's) with the labels of ``pool`` (the training split) kept for a
    stratified, seeded ``fraction`` of it (at least one sample) and :data:`UNLABELLED` for the others.

    The kept set grows with ``fraction`` for one seed (1% of the samples are among the 10%): the samples are
    ranked once and the first ``round(fraction * len(pool))`` keep their labels.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}")
    out = torch.as_tensor(labels).long().clone()
    if fraction == 1.0 or len(pool) == 0:
        return out
    keep = stratified_sample(out[pool], max(1, int(round(fraction * len(pool)))), derive_seed(seed, "labeled"))
    hidden = torch.ones(len(pool), dtype=torch.bool)
    hidden[keep] = False
    out[pool[hidden]] = UNLABELLED
    return out


def take_subset(pool: torch.Tensor, labels: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """``n`` indices of ``pool`` (stratified, seeded, kept in ascending order); all when n is None or >= len."""
    if n is None or n >= len(pool):
        return pool
    if n <= 0:
        raise ValueError(f"train_subset must be > 0, got {n}")
    return pool[stratified_sample(labels[pool], n, derive_seed(seed, "train_subset"))]
