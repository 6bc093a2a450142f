"""Classic knowledge distillation (Hinton et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.distill.ce import check_weight
from orchestrator.models.base import ModelOutput

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, KD: -r 0.1 -a 0.9 -b 0, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403; train_student.py defaults), as config keys:
# the first points a sweep evaluates (sweep.paper_defaults).
PAPER_DEFAULTS = {"distill.gamma": 0.1, "distill.alpha": 0.9, "distill.kd.temperature": 4.0}


def check_temperature(value: float, name: str = "temperature") -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def as_single_teacher(teacher: TeacherOutputs) -> ModelOutput:
    """The one teacher output (a list of length 1 is accepted); anything else raises."""
    if isinstance(teacher, ModelOutput):
        return teacher
    if isinstance(teacher, Sequence) and len(teacher) == 1 and isinstance(teacher[0], ModelOutput):
        return teacher[0]
    got = "None" if teacher is None else f"{type(teacher).__name__} of length {len(teacher)}"
    raise ValueError(f"this objective needs exactly one teacher output, got {got}")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    Args:
        student_logits, teacher_logits: (B, C); the teacher side gets no gradient.
    Returns:
        scalar. Its gradient wrt the student logits is T * (softmax(s/T) - softmax(t/T)) / B.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class KDDistiller(Distiller):
    """``{"ce": gamma * CE, "kd": alpha * kd_loss(student, teacher, T)}``."""

    def __init__(self, gamma: float = 1.0, alpha: float = 1.0, temperature: float = 4.0):
        super().__init__()
        self.gamma = check_weight("gamma", gamma)
        self.alpha = check_weight("alpha", alpha)
        self.temperature = check_temperature(temperature)

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        t = as_single_teacher(teacher)
        return {
            "ce": self.gamma * F.cross_entropy(student.logits, labels),
            "kd": self.alpha * kd_loss(student.logits, t.logits, self.temperature),
        }
