"""The teacher outputs a sweep precomputes once: the fields every objective its space can choose reads."""

from __future__ import annotations

from orchestrator.data import DataBundle
from orchestrator.distill import registry
from orchestrator.output_cache import teacher_outputs_file
from orchestrator.plan import Plan
from orchestrator.search import possible_configs


def outputs_for(teacher: str, plan: Plan, data: DataBundle) -> list[str]:
    """Precompute, once, the teacher outputs every objective the space can choose reads, on the un-augmented
    train split (cached by content across sweeps); none when the teacher must run live."""
    cfg = plan.cfg
    configs = possible_configs(plan.space, cfg)
    needs = registry.Needs()
    for c in configs:
        needs = needs | registry.teacher_needs(c.distill)
    live = cfg.data.augment or not cfg.teacher.cache_outputs or not all(registry.cacheable(c.distill) for c in configs)
    if live or not needs.teacher:
        return []
    path = teacher_outputs_file(teacher, cfg, data, needs)
    return [] if path is None else [str(path)]
