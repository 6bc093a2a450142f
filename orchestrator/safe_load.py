"""Reading checkpoints and caches: tensors and plain containers only, never code.

Every checkpoint or cache file this tool reads goes through :func:`load_tensors`
(``torch.load(..., weights_only=True)``); a file whose pickle would build other
objects (and could run code while doing so) is refused with one message.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch


class UnsafeFileError(ValueError):
    """A checkpoint or cache file holds pickled objects other than tensors and plain containers."""


def load_tensors(path: str | Path, what: str, map_location="cpu", mmap: bool = False):
    """``torch.load(path, weights_only=True)``; ``what`` names the file in the refusal (e.g. "teacher checkpoint");
    ``mmap``: tensors stay in the file's pages (read on access, shared between processes) instead of copied."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{what} '{path}' holds Python objects other than tensors and plain containers; refused, because "
            "loading it could run code. Use a file written by this tool (weights only)."
        ) from exc
