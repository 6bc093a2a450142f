"""Cross-entropy only: the student trained alone (no teacher)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.models.base import ModelOutput


def check_weight(name: str, value: float) -> float:
    """A loss weight must be a finite number >= 0."""
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite weight >= 0, got {value}")
    return value


class CEDistiller(Distiller):
    """``{"ce": gamma * CE(student.logits (B, C), labels (B,))}``."""

    needs_teacher = False

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = check_weight("gamma", gamma)

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        return {"ce": self.gamma * F.cross_entropy(student.logits, labels)}
