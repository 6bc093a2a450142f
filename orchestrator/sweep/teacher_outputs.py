"""The teacher outputs a sweep precomputes once: the fields every objective its space can choose reads."""

from __future__ import annotations

from orchestrator.data import DataBundle
from orchestrator.distill import registry
from orchestrator.output_cache import teacher_outputs_file
from orchestrator.plan import Plan
from orchestrator.search import possible_configs


def outputs_for(teacher: str, plan: Plan, data: DataBundle) -> list[str]:
    """Precompute, once, the teacher outputs the space's objectives read, on the un-augmented train split
    (cached by content across sweeps); none when the teacher must run live.

    When every field and feature stage they read would exceed ``teacher.cache_max_gb``, only the vector
    fields (logits, embedding) are cached: trials whose objective reads no feature map use them, the others
    run the teacher live (each trial checks, :meth:`CachedTeacherOutputs.covers`)."""
    cfg = plan.cfg
    if cfg.data.augment or not cfg.teacher.cache_outputs:
        return []
    cacheable = [c for c in possible_configs(plan.space, cfg) if registry.cacheable(c.distill)]
    needs = registry.Needs()
    for c in cacheable:
        needs = needs | registry.teacher_needs(c.distill)
    if not needs.teacher:
        return []
    path = teacher_outputs_file(teacher, cfg, data, needs)
    if path is None and needs.stages and needs.fields:
        vectors = registry.Needs(needs.fields)
        path = teacher_outputs_file(teacher, cfg, data, vectors)
        if path is not None:
            live = sorted({c.distill.method for c in cacheable if registry.teacher_needs(c.distill).stages})
            print(f"cached the teacher's {', '.join(sorted(vectors.fields))} only: trials of {', '.join(live)} "
                  "read feature maps and run the teacher live", flush=True)
    return [] if path is None else [str(path)]
