"""Files written atomically: to a temporary file in the same folder, synced, then renamed into place.

A failed write (a full disk included) leaves the previous file, if any, whole, and no temporary file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path``, atomically. Serialised in memory first: torch's own file writer turns
    ENOSPC into a RuntimeError, Python's file write raises ``OSError(ENOSPC)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_atomic(path, lambda handle: handle.write(buffer.getbuffer()))


def write_json_atomic(path: Path, payload: Any) -> None:
    """``payload`` as indented, key-sorted JSON to ``path``, atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    _write_atomic(path, lambda handle: handle.write(text.encode()))
