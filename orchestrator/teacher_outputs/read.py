"""What a run reads instead of its teachers: a precomputed output file or a view cache folder, chosen per seed."""

from __future__ import annotations

from pathlib import Path

from orchestrator.distill import registry
from orchestrator.teacher_outputs.cached import CachedTeacherOutputs
from orchestrator.teacher_outputs.views import TeacherViews


def load_outputs(path: str) -> CachedTeacherOutputs | TeacherViews:
    """A precomputed teacher-output file (un-augmented split), or a view cache folder (augmented views)."""
    return TeacherViews(path) if Path(path).is_dir() else CachedTeacherOutputs.load(path)


def outputs_for_seed(caches: list, seed: int, num_teachers: int, distill_cfg) -> list:
    """What a Learner training with ``seed`` reads instead of its teachers: the un-augmented caches, if they hold
    everything ``distill_cfg``'s objective reads; or the view caches of ``seed``, one per teacher ([]: none
    holds this seed's views, e.g. a confirmation seed the sweep built no views for, so the teachers run live).
    A cache of another seed is never used."""
    plain = [c for c in caches if isinstance(c, CachedTeacherOutputs)]
    if plain:
        needs = registry.teacher_needs(distill_cfg)
        return plain if registry.cacheable(distill_cfg) and all(c.covers(needs) for c in plain) else []
    views = [c for c in caches if c.meta.seed == seed]
    return views if views and len(views) == max(num_teachers, 1) else []


def teacher_inputs_tag(inputs: dict[int, list]) -> str:
    """Where each seed's teacher outputs come from, e.g. "seed 0: view cache" (the trial run's tag)."""
    def kind(caches: list) -> str:
        if not caches:
            return "live teacher"
        return "precomputed outputs" if isinstance(caches[0], CachedTeacherOutputs) else "view cache"

    return ", ".join(f"seed {seed}: {kind(caches)}" for seed, caches in inputs.items())
