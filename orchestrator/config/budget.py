"""A deployment budget on a student's cost, e.g. ``cost/latency_ms <= 0.02`` or ``macs <= 2e6``.

Pure parsing and checks (no torch): config validation parses ``sweep.budget`` with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config.cost_metrics import ALIASES, METRICS

_FORM = re.compile(r"^\s*([\w/.]+)\s*<=\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Budget:
    """``metric <= limit`` (metric: one of :data:`orchestrator.config.cost_metrics.METRICS`' values)."""

    metric: str
    limit: float

    def fits(self, costs: Mapping[str, float]) -> bool:
        """Whether a student with these ``cost/*`` metrics is within the budget."""
        return costs[self.metric] <= self.limit

    def __str__(self) -> str:
        return f"{self.metric} <= {self.limit:g}"


def parse_budget(text: str) -> Budget:
    """``"cost/latency_ms <= 0.02"``, ``"macs <= 2e6"`` -> Budget; ValueError saying the allowed form."""
    allowed = (f"'<metric> <= <number>' with metric one of {sorted(METRICS.values())} "
               f"(or {', '.join(sorted(ALIASES))}), e.g. 'cost/macs <= 2e6'")
    match = _FORM.match(text)
    if not match:
        raise ValueError(allowed)
    metric = ALIASES.get(match.group(1), match.group(1))
    try:
        limit = float(match.group(2))
    except ValueError:
        raise ValueError(allowed) from None
    if metric not in METRICS.values() or not limit > 0:
        raise ValueError(allowed)
    return Budget(metric, limit)


def no_fit_problem(budget: Budget, costs: Mapping[str, Mapping[str, float]]) -> str | None:
    """Why no student of ``costs`` (architecture -> its ``cost/*`` metrics) fits ``budget``, or None if one does."""
    if not costs:
        return None
    if any(budget.fits(c) for c in costs.values()):
        return None
    arch, cheapest = min(costs.items(), key=lambda item: item[1][budget.metric])
    return (f"no student fits {budget}: the cheapest the space can train, {arch}, has "
            f"{budget.metric} = {cheapest[budget.metric]:g}")
