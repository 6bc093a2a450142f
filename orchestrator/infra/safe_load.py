"""Reading checkpoints and caches: tensors and plain containers only, never code.

Every checkpoint or cache file this tool reads goes through :func:`load_tensors`
(``torch.load(..., weights_only=True)``). A file whose pickle would build other
objects (and could run code while doing so) is refused with
:class:`UnsafeFileError`; an empty file, or one that is not a PyTorch
checkpoint at all (random bytes, a truncated archive, a text file), gets
:class:`NotACheckpointError`, which says so.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol >= 2 (torch's legacy, non-zip format)


class CheckpointFileError(ValueError):
    """A checkpoint or cache file that cannot be read as tensors (see the two subclasses)."""


class UnsafeFileError(CheckpointFileError):
    """A checkpoint or cache file holds pickled objects other than tensors and plain containers."""


class NotACheckpointError(CheckpointFileError):
    """A file that is empty or not a PyTorch checkpoint at all."""


def _not_a_checkpoint(path: Path, what: str, detail: str) -> NotACheckpointError:
    return NotACheckpointError(f"{what} '{path}' is not a PyTorch checkpoint ({detail}); give a file written by "
                               "torch.save, such as this tool's checkpoints")


def _refused(path: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"{what} '{path}' holds Python objects other than tensors and plain containers; refused, because "
        "loading it could run code. Use a file written by this tool (weights only)."
    )


def _pickle_refusal(exc: pickle.UnpicklingError) -> bool:
    """The weights-only unpickler met a global or a call it does not allow (rather than bytes it cannot parse)."""
    text = str(exc)
    return any(word in text for word in ("GLOBAL", "Unsupported global", "reduce", "Unsupported class"))


def load_tensors(path: str | Path, what: str, map_location="cpu", mmap: bool = False):
    """``torch.load(path, weights_only=True)``; ``what`` names the file in the refusal (e.g. "teacher checkpoint");
    ``mmap``: tensors stay in the file's pages (read on access, shared between processes) instead of copied.
    Raises UnsafeFileError (objects that could run code) or NotACheckpointError (empty, or not torch.save's)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise NotACheckpointError(f"{what} '{path}' is empty (0 bytes); give a file written by torch.save")
    if path.is_file() and not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            if handle.read(1) != bytes([PICKLE_PROTO]):
                raise _not_a_checkpoint(path, what, "neither a zip archive nor a pickle")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if _pickle_refusal(exc):
            raise _refused(path, what) from exc
        raise _not_a_checkpoint(path, what, "its pickle stream is invalid") from exc
    except (EOFError, KeyError, IndexError, UnicodeDecodeError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "PytorchStreamReader" not in str(exc) and "zip" not in str(exc):
            raise
        raise _not_a_checkpoint(path, what, f"unreadable: {type(exc).__name__}") from exc
