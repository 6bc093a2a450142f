"""Building objectives in tests: a DistillConfig from dotted values, and build_objective with plain sizes."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from orchestrator.config.schema import Config, apply_overrides
from orchestrator.distill import Objective, build_objective
from orchestrator.models.base import Shapes


def distill_config(method: str, **values):
    """``Config().distill`` with ``method`` and dotted values under ``distill.`` (e.g. ``crd__nce_k=5``)."""
    overrides = {"distill.method": method, **{f"distill.{k.replace('__', '.')}": v for k, v in values.items()}}
    return apply_overrides(Config(), overrides).distill


def build(cfg, *, student_dim: int, teacher_dims: Sequence[int], train_labels: Tensor, num_classes: int | None = None,
          **kw) -> Objective:
    """build_objective with embedding sizes only (no feature stages)."""
    classes = num_classes if num_classes is not None else int(train_labels.max()) + 1
    return build_objective(cfg, num_classes=classes, student=Shapes(student_dim),
                           teachers=[Shapes(d) for d in teacher_dims], train_labels=train_labels, **kw)
