"""Whether this process is in a dry run: caches that a run would fill (the provisioned dataset, the measured
student costs) are then read, or computed in memory, but not written (``--dry-run`` writes nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTIVE: ContextVar[bool] = ContextVar("dry_run", default=False)


@contextmanager
def writing_nothing(enabled: bool = True) -> Iterator[None]:
    """Within it (``enabled``), :func:`active` is True."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    """Whether a dry run is in progress (caches are not written)."""
    return _ACTIVE.get()
