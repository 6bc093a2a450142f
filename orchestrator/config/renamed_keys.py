"""Config keys that were renamed: the old name keeps working for one release, with a one-line notice.

Each term's weight is ``distill.<term>.weight``; the CE, KD and CRD weights used to be ``distill.gamma``,
``distill.alpha`` and ``distill.beta``. Wherever a user gives a key (YAML config, ``key=value`` overrides,
search spaces, ``sweep.held_keys``) the old name is read as the new one and stderr says so once per key
and process. Given both names with different values, :func:`clash` names the pair (the caller refuses it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

RENAMED_KEYS = {
    "distill.gamma": "distill.ce.weight",
    "distill.alpha": "distill.kd.weight",
    "distill.beta": "distill.crd.weight",
}
_told: set[str] = set()  # the old keys this process has already printed the notice for


def deprecation(old: str) -> str:
    """The one-line notice for the old key ``old``."""
    return f"{old} is deprecated: use {RENAMED_KEYS[old]} (the old key works until the next release)"


def current_key(key: str) -> str:
    """``key`` under its current name; an old name prints :func:`deprecation` on stderr (once per process)."""
    new = RENAMED_KEYS.get(key)
    if new is None:
        return key
    if key not in _told:
        _told.add(key)
        print(deprecation(key), file=sys.stderr)
    return new


def clash(values: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first (old key, new key) both in ``values`` (dotted key -> value) with different values, else None."""
    for old, new in RENAMED_KEYS.items():
        if old in values and new in values and values[old] != values[new]:
            return old, new
    return None


def current_items(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """(dotted key, value) pairs as a dict under current names, in order (a renamed key takes the place of the
    first of its two names; check :func:`clash` first, else the later value wins)."""
    out: dict[str, Any] = {}
    for key, value in items:
        out[current_key(key)] = value
    return out
