"""The Pareto front of trials over several objectives (e.g. maximise val/acc1, minimise cost/latency_ms)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MODES = ("max", "min")


def dominates(a: Mapping, b: Mapping, objectives: Mapping[str, str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    better = False
    for key, mode in objectives.items():
        x, y = (a[key], b[key]) if mode == "max" else (-a[key], -b[key])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Mapping], objectives: Mapping[str, str]) -> list[int]:
    """Indices (in input order) of the points no other point dominates. ``objectives``: key -> "max" or
    "min". Points equal in every objective are all kept (ties are not dominated); a point lacking a value
    (missing, None or NaN) is never on the front and dominates nothing."""
    bad = [m for m in objectives.values() if m not in MODES]
    if not objectives or bad:
        raise ValueError(f"objectives: a non-empty mapping of key -> {' or '.join(MODES)}, got {dict(objectives)}")

    def complete(p: Mapping) -> bool:
        return all(isinstance(p.get(k), (int, float)) and not math.isnan(p[k]) for k in objectives)

    valid = [i for i, p in enumerate(points) if complete(p)]
    return [i for i in valid if not any(dominates(points[j], points[i], objectives) for j in valid if j != i)]


def spread(points: Sequence[Mapping], front: Sequence[int], key: str, k: int) -> list[int]:
    """At most ``k`` of the ``front`` indices, spread along ``key`` (e.g. cost/latency_ms): both ends first,
    then the points nearest evenly spaced ranks; in ``key`` order. ``k`` >= the front's size keeps all."""
    ordered = sorted(front, key=lambda i: (points[i][key], i))
    if k >= len(ordered):
        return ordered
    if k <= 0:
        return []
    if k == 1:
        return ordered[:1]
    ranks = sorted({round(j * (len(ordered) - 1) / (k - 1)) for j in range(k)})
    return [ordered[r] for r in ranks]
