"""The tool's cache folder: ``$DISTILL_CACHE_DIR``, else ``~/.cache/distill-orchestrator`` (teachers, outputs, costs)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill-orchestrator"))
