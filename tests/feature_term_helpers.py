"""Building one feature term in tests: fixed stage shapes, a Batch with gradient-tracking maps, gradient checks."""

from __future__ import annotations

import torch

from distill_helpers import distill_config
from orchestrator.distill import Batch, build_objective
from orchestrator.models.base import ModelOutput, Shapes

STUDENT = Shapes(12, {"stage1": (4, 8, 8), "stage2": (8, 4, 4), "stage3": (8, 2, 2)})
TEACHER = Shapes(16, {"stage1": (6, 8, 8), "stage2": (12, 4, 4), "stage3": (12, 2, 2)})
BATCH = 6


def output(shapes: Shapes, g: torch.Generator, grad: bool) -> ModelOutput:
    """Random (B, ...) maps and embedding for ``shapes`` (post-ReLU maps, as our models return), requiring grad."""
    features = [torch.randn(BATCH, *s, generator=g).relu().requires_grad_(grad) for s in shapes.stages.values()]
    return ModelOutput(features, torch.randn(BATCH, shapes.embedding, generator=g).requires_grad_(grad),
                       torch.randn(BATCH, 10, generator=g))


def term_and_batch(method: str, teachers: int = 1, teacher_weights=None, seed: int = 0, **values):
    """The term ``method`` built for STUDENT and ``teachers`` copies of TEACHER, and a Batch whose student and
    teacher tensors all require grad (so a test can see which of them receive one)."""
    cfg = distill_config(method, **values)
    torch.manual_seed(seed)
    objective = build_objective(cfg, num_classes=10, student=STUDENT, teachers=[TEACHER] * teachers,
                                train_labels=torch.arange(20) % 10, teacher_weights=teacher_weights)
    g = torch.Generator().manual_seed(seed + 1)
    batch = Batch(output(STUDENT, g, True), [output(TEACHER, g, True) for _ in range(teachers)],
                  torch.arange(BATCH) % 10, torch.arange(BATCH))
    return objective.terms[method], batch


def assert_student_gets_gradients_teacher_none(term, batch, pre_stage: bool = False) -> None:
    """Backward of the term (or its pre-stage loss): the used student tensors and every trainable part of the
    term get finite gradients unless ``pre_stage`` trains only teacher-side parts; teacher tensors get none."""
    value = term.pre_stage_loss(batch) if pre_stage else term(batch)
    value.backward()
    assert torch.isfinite(value)
    for t in batch.teachers:
        assert all(f.grad is None for f in t.features) and t.embedding.grad is None
    grads = [f.grad for f in batch.student.features] + [batch.student.embedding.grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    return value
