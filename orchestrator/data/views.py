"""The augmentation stream: each sample's view as a pure function of ``(seed, epoch, index)``.

A view's random parameters (crop offsets, flip) are not drawn from a generator's state but
hashed from the key, as counter-based generators do (Salmon et al., "Random numbers: as easy
as 1, 2, 3", SC 2011): SplitMix64's finaliser mixes ``seed``, ``epoch``, the parameter's
number and the sample ``index`` into 64 random bits. So a view depends neither on the batch
order, the batch size, the process (DataLoader worker, DDP rank) nor anything drawn before
it: the teacher's outputs on it can be computed once per sweep, without the pixels of any
trial's batches, and every trial with the same seed sees the same views.

A sample can have several views in one epoch (SupCon's two crops of each image): view ``v``'s
parameters are numbered ``v * PARAMS_PER_VIEW + k`` (:func:`view_param`), so view 0 is the stream
the loader has always given and view 1 is another, independent one, also a function of the key alone.

:class:`ViewKey` is what an augmenting dataset's ``__getitems__`` receives from the loader
(:class:`orchestrator.data.loaders.ViewKeys`) instead of a bare index.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

STREAM_VERSION = 1  # bump when the hash or a parameter's number changes: view caches then no longer match
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
PARAMS_PER_VIEW = 16  # a view's random parameters are numbered k < 16 (crop/flip use 0, 1, 2)


class ViewKey(NamedTuple):
    """One sample's view: training ``seed``, ``epoch`` (the loader's) and the sample's ``index`` in its dataset."""

    seed: int
    epoch: int
    index: int


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _u64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)  # negative values wrap (two's complement)


def random_bits(seed, epoch, index, param: int) -> np.ndarray:
    """64 random bits (uint64) per element of the broadcast ``(seed, epoch, index)`` for parameter ``param``."""
    with np.errstate(over="ignore"):
        h = _mix(_u64(seed) + _GOLDEN)
        h = _mix(h ^ (_u64(epoch) + _GOLDEN))
        h = _mix(h ^ (_u64(param) * _GOLDEN))
        return _mix(h ^ (_u64(index) + _GOLDEN))


def view_param(view: int, k: int) -> int:
    """The number of view ``view``'s parameter ``k`` (view 0's are ``k`` itself: the loader's stream)."""
    if view < 0 or not 0 <= k < PARAMS_PER_VIEW:
        raise ValueError(f"need view >= 0 and 0 <= k < {PARAMS_PER_VIEW}, got view={view}, k={k}")
    return view * PARAMS_PER_VIEW + k


def uniform_ints(seed, epoch, index, param: int, span: int) -> torch.Tensor:
    """Integers uniform on ``[0, span)`` (long tensor shaped like ``index``; multiply-shift of the top 32 bits)."""
    if not 0 < span < 2**31:
        raise ValueError(f"span must be in [1, 2**31), got {span}")
    top = random_bits(seed, epoch, index, param) >> np.uint64(32)
    return torch.from_numpy(((top * np.uint64(span)) >> np.uint64(32)).astype(np.int64))


def coins(seed, epoch, index, param: int) -> torch.Tensor:
    """Fair coin flips (bool tensor shaped like ``index``): the top bit."""
    return torch.from_numpy((random_bits(seed, epoch, index, param) >> np.uint64(63)).astype(bool))


def key_arrays(keys) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``(seeds, epochs, indices)`` of a list of :class:`ViewKey` (indices as a long tensor)."""
    table = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    return table[:, 0], table[:, 1], torch.from_numpy(table[:, 2].copy())
