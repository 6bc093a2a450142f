"""Fixed inputs of the feature-baseline tests (FitNet, AT, SP, CC, VID, RKD): the values their reference
numbers were computed on (RepDistiller's modules, see each test file), and shared checks."""

from __future__ import annotations

import torch

from distill_helpers import distill_config
from orchestrator.config.schema import apply_overrides
from orchestrator.distill import build_objective
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput, Shapes

B = 8
# A 3-stage student against a 4-stage teacher, as cnn_student_tiny against cnn_teacher.
STUDENT = Shapes(12, {"stage1": (4, 8, 8), "stage2": (8, 8, 8), "stage3": (16, 4, 4)})
TEACHER = Shapes(16, {"stage1": (6, 16, 16), "stage2": (12, 8, 8), "stage3": (24, 4, 4), "stage4": (24, 2, 2)})


def maps(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Non-negative (post-ReLU-like) float32 maps (B, *shape), one per shape, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, *shape, generator=g).abs() for shape in shapes]


def vectors(seed: int, *dims: int) -> list[torch.Tensor]:
    """Float32 (B, dim) Gaussian vectors from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, dim, generator=g) for dim in dims]


def outputs(seed: int = 0, student: Shapes = STUDENT, teachers: tuple[Shapes, ...] = (TEACHER,)):
    """A student ModelOutput and one per teacher: features per stage, embedding and logits (10 classes)."""
    def one(shapes: Shapes, s: int) -> ModelOutput:
        (emb, logits) = vectors(s, shapes.embedding, 10)
        return ModelOutput(maps(s + 1, *shapes.stages.values()), emb, logits)

    return one(student, seed), [one(t, seed + 10 * (m + 1)) for m, t in enumerate(teachers)]


def build_term(method: str, teachers: tuple[Shapes, ...] = (TEACHER,), teacher_weights=None, seed: int = 0,
               **values):
    """``method``'s Objective (built right after ``torch.manual_seed(seed)``) on STUDENT and ``teachers``."""
    torch.manual_seed(seed)
    return build_objective(distill_config(method, **values), num_classes=10, student=STUDENT, teachers=list(teachers),
                           train_labels=torch.arange(40) % 10, teacher_weights=teacher_weights)


def check_gradients(method: str, name: str, **values) -> None:
    """The term's gradient reaches the student's features/embedding and the term's own parameters, never the
    teacher's."""
    objective = build_term(method, **values)
    student, teachers = outputs()
    for out in (student, *teachers):
        for t in (*out.features, out.embedding):
            t.requires_grad_(True)
    objective(student, teachers, torch.arange(B) % 10, torch.arange(B))[name].backward()
    reached = [t for t in (*student.features, student.embedding) if t.grad is not None and t.grad.abs().sum() > 0]
    assert reached, "no gradient reaches the student"
    assert all(t.grad is None for out in teachers for t in (*out.features, out.embedding)), "the teacher got a gradient"
    for p in objective.terms[name].parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), "a part of the term got no gradient"


def digits_accuracy(digits, method: str, **overrides) -> float:
    """Test accuracy of the digits student after the fixture's epochs with ``method`` (and overrides)."""
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": method, **overrides})
    trainer = Learner(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("train/loss"))
    return trainer.evaluate("test")["acc1"]
