"""The students a sweep can train, and what each costs (:mod:`orchestrator.deploy.cost`), measured by the driver.

The driver measures every student architecture the search space can reach before the first trial
starts: on the machine that runs the search, while no trial competes for its cores, once per
architecture (the disk cache keeps it for later sweeps). Trials read their student's cost from
:class:`~orchestrator.sweep.trial.TrialContext`. A size knob sampled from a continuous range (a float without
``step``) has no finite list of architectures: each such trial measures its own student when it starts,
on the node that runs it (cached there too), and the plan says so.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config.budget import Budget, no_fit_problem
from orchestrator.config.schema import STUDENT_KNOBS, Config, apply_overrides, flatten, student_arch, to_dict
from orchestrator.deploy.cost import cost_metrics, describe_cost, student_cost
from orchestrator.models import build_model, describe_model
from orchestrator.models.base import arch_spec, knob_problem
from orchestrator.sweep.search.space import Param, SearchSpace

STUDENT_KEYS = ("model.student", *(f"model.{key}" for key in STUDENT_KNOBS))


def _values(p: Param) -> list | None:
    """Every value ``p`` can take, or None for a continuous range."""
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int":
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    if not p.step:
        return None
    count = int(round((p.high - p.low) / p.step))
    return [round(p.low + i * p.step, 10) for i in range(count + 1)]


def reachable_students(space: SearchSpace, base: Config) -> tuple[list[str], list[str]]:
    """(the student architectures trials of ``space`` can train, sorted; the student keys it samples from a
    continuous range). A ``when`` on a key other than the student's is taken as possibly true and possibly
    false, so the list may hold a few architectures no trial trains, never miss one."""
    known = {**flatten(to_dict(base)), **space.fixed}
    sampled = {p.key for p in space.params}
    params = [p for p in space.params if p.key in STUDENT_KEYS]
    reached: set[tuple] = set()
    continuous: list[str] = []

    def holds(p: Param, chosen: dict[str, Any]) -> bool | None:
        verdicts = []
        for key, allowed in p.when.items():
            if key in STUDENT_KEYS or key not in sampled:
                verdicts.append((chosen if key in STUDENT_KEYS else known).get(key) in allowed)
            else:
                verdicts.append(None)
        if False in verdicts:
            return False
        return None if None in verdicts else True

    def walk(i: int, chosen: dict[str, Any]) -> None:
        if i == len(params):
            reached.add(tuple(chosen[k] for k in STUDENT_KEYS))
            return
        p = params[i]
        verdict = holds(p, chosen)
        values = _values(p)
        if verdict is not True or values is None:  # not sampled (keeps its value), or not enumerable
            walk(i + 1, chosen)
        if verdict is not False:
            if values is None:
                continuous.extend([p.key] if p.key not in continuous else [])
            else:
                for value in values:
                    walk(i + 1, {**chosen, p.key: value})

    walk(0, {k: known[k] for k in STUDENT_KEYS})
    archs = set()
    for student, *knob_values in reached:
        knobs = {knob: v for knob, v in zip(STUDENT_KNOBS.values(), knob_values) if v is not None}
        if knob_problem(student, knobs) is None:
            archs.add(arch_spec(student, knobs))
    return sorted(archs), continuous


def measure_students(archs: list[str], data, threads: int) -> dict[str, dict]:
    """The cost of each of ``archs`` for ``data``'s input (cache, else measured here), one line each."""
    costs = {}
    for arch in archs:
        costs[arch] = student_cost(arch, data.num_classes, data.in_channels, data.image_size, threads)
        print(f"  cost of {describe_cost(costs[arch])}", flush=True)
    return costs


def cost_of(cfg: Config, costs: dict[str, dict], data_shape: list[int]) -> dict:
    """The cost of ``cfg``'s student: from the driver's ``costs``, else measured here (a continuous knob).
    ``data_shape``: [num_classes, in_channels, image_size]."""
    arch = student_arch(cfg.model)
    if arch in costs:
        return costs[arch]
    num_classes, in_channels, image_size = data_shape
    return student_cost(arch, num_classes, in_channels, image_size, cfg.export.latency_threads)


def params_cost(base: Config, params: dict[str, Any], costs: dict[str, dict], data_shape: list[int]) -> dict:
    """The cost of the student of ``base`` with a trial's sampled ``params`` (a leaderboard row)."""
    return cost_of(apply_overrides(base, params) if params else base, costs, data_shape)


def budget_costs(archs: list[str], data, budget: Budget, threads: int) -> dict[str, dict[str, float]]:
    """The ``cost/*`` metrics of each of ``archs`` that ``budget`` reads: parameters and MACs from the
    architecture alone; a latency budget measures latency (cached per architecture, as the sweep does)."""
    if budget.metric in ("cost/params", "cost/macs"):
        out = {}
        for a in archs:
            size = describe_model(build_model(a, data.num_classes, data.in_channels), data.in_channels, data.image_size)
            out[a] = {"cost/params": float(size["params"]), "cost/macs": float(size["macs"])}
        return out
    return {a: cost_metrics(student_cost(a, data.num_classes, data.in_channels, data.image_size, threads))
            for a in archs}


def budget_problem(space: SearchSpace, base: Config, data, budget: Budget) -> tuple[str | None, dict]:
    """(why no student ``space`` can train fits ``budget``, or None; the costs read). A student key sampled
    from a continuous range cannot be enumerated: then None (each trial checks its own student)."""
    archs, continuous = reachable_students(space, base)
    costs = budget_costs(archs, data, budget, base.export.latency_threads)
    return (None if continuous else no_fit_problem(budget, costs)), costs


def students_table(space: SearchSpace, base: Config, data, budget: Budget | None = None,
                   costs: dict[str, dict[str, float]] | None = None) -> str:
    """The students trials can train with their parameters and MACs per image (a dry run's view; latency is
    measured when the sweep starts), smallest first; with a ``budget`` (and the ``costs`` it read), whether
    each fits."""
    archs, continuous = reachable_students(space, base)
    sizes = {a: describe_model(build_model(a, data.num_classes, data.in_channels), data.in_channels, data.image_size)
             for a in archs}
    shape = f"{data.in_channels}x{data.image_size}x{data.image_size}"
    width = max(len(a) for a in archs)

    def verdict(a: str) -> str:
        if budget is None or costs is None or a not in costs:
            return ""
        value = costs[a][budget.metric]
        return f"  within {budget}" if budget.fits(costs[a]) else f"  over budget ({budget.metric} = {value:g}): never trained"

    lines = [f"students ({len(archs)}; MACs per {shape} image; ONNX Runtime latency is measured when the sweep starts):"]
    lines += [f"  {a:<{width}}  {sizes[a]['params']:>11,} params  {sizes[a]['macs'] / 1e6:>9.3f} M MACs{verdict(a)}"
              for a in sorted(archs, key=lambda a: sizes[a]["macs"])]
    if len(archs) > 1:
        macs = [s["macs"] for s in sizes.values()]
        lines.append(f"  span: {max(macs) / max(min(macs), 1):.1f}x in MACs")
    if continuous:
        lines.append(f"  and every value of {', '.join(continuous)} in its range (continuous: measured by each trial)")
    return "\n".join(lines)
