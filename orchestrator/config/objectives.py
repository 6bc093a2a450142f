"""What a sweep optimises: ``sweep.objectives`` (accuracy first, then costs to minimise) and ``sweep.budget``.

``sweep.objectives`` items are ``metric:mode`` (YAML ``[val/acc1: max, cost/latency_ms: min]``, command line
``sweep.objectives=[val/acc1:max,cost/macs:min]``); cost metrics may be written by their short names
(``macs``, ``params``, ``latency_ms``, ``latency_ms_b64``). Empty or null: the single objective
``sweep.metric``/``sweep.mode``. Pure parsing (no torch, no Ray): config validation uses it.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.budget import Budget, parse_budget
from orchestrator.config.cost_metrics import ALIASES, METRICS

MODES = ("max", "min")
OVER_BUDGET = "budget/over"  # 1 in the one result of a trial whose student exceeds sweep.budget (not trained)


def objective_text(item: Any) -> Any:
    """One ``sweep.objectives`` item as ``metric:mode`` text (a one-key YAML mapping ``{metric: mode}`` too);
    anything else is returned unchanged for validation to refuse."""
    if isinstance(item, dict) and len(item) == 1:
        (metric, mode), = item.items()
        return f"{metric}:{mode}"
    return item.replace(" ", "") if isinstance(item, str) else item


def parse_objectives(items: list[Any], metric: str, mode: str) -> dict[str, str]:
    """``["val/acc1:max", "macs:min"]`` -> ``{"val/acc1": "max", "cost/macs": "min"}``; ValueError saying what
    is allowed. The first entry is the accuracy metric, ``metric``:``mode`` (``sweep.metric``/``sweep.mode``:
    what ASHA, the leaderboard and the confirmation rank); the others are distinct cost metrics, minimised."""
    allowed = (f"a list of 'metric:mode', first {metric}:{mode} (sweep.metric:sweep.mode), then cost metrics "
               f"to minimise, each once: {sorted(METRICS.values())} (or {', '.join(sorted(ALIASES))}), "
               f"e.g. [{metric}:{mode}, cost/latency_ms:min]; or null for the single objective sweep.metric")
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        text = objective_text(item)
        name, sep, how = text.rpartition(":") if isinstance(text, str) else ("", "", "")
        name = ALIASES.get(name, name)
        first_ok = i > 0 or (name == metric and how == mode)
        cost_ok = i == 0 or (name in METRICS.values() and how == "min")
        if not sep or how not in MODES or name in out or not first_ok or not cost_ok:
            raise ValueError(allowed)
        out[name] = how
    return out


def resolve(cfg: Any) -> dict[str, str]:
    """The sweep's objectives, metric -> "max"/"min" in order, the accuracy metric first: ``sweep.objectives``,
    else ``{sweep.metric: sweep.mode}`` (``cfg``: a validated :class:`orchestrator.config.schema.Config`)."""
    sw = cfg.sweep
    if not sw.objectives:
        return {sw.metric: sw.mode}
    return parse_objectives(sw.objectives, sw.metric, sw.mode)


def is_multi_objective(cfg: Any) -> bool:
    """Whether the search has several objectives (accuracy and at least one cost)."""
    return len(resolve(cfg)) > 1


def budget_of(cfg: Any) -> Budget | None:
    """``sweep.budget`` parsed (``cost/macs <= 2e6``), or None: no budget."""
    return parse_budget(cfg.sweep.budget) if cfg.sweep.budget else None
