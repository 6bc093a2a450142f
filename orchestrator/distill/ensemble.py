"""Multi-teacher objectives: compress an ensemble of M teachers into one student.

``teacher`` is a list of M ModelOutputs, one per teacher (teachers may differ in
embedding size). Optional per-teacher weights w (M floats >= 0, normalised to
sum 1; default uniform) weight both the KD target and the CRD terms; with the
default they are plain means over the teachers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.distill.ce import check_weight
from orchestrator.distill.crd import CRDLoss, ContrastiveDistiller
from orchestrator.distill.kd import check_temperature
from orchestrator.models.base import ModelOutput


def normalise_weights(weights: Sequence[float] | None, num_teachers: int) -> tuple[float, ...]:
    """M weights >= 0 with a positive sum, scaled to sum 1; None -> uniform."""
    if num_teachers <= 0:
        raise ValueError(f"an ensemble needs at least one teacher, got {num_teachers}")
    if weights is None:
        return tuple(1.0 / num_teachers for _ in range(num_teachers))
    w = [float(x) for x in weights]
    if len(w) != num_teachers:
        raise ValueError(f"teacher_weights has {len(w)} entries for {num_teachers} teachers")
    if any(not x >= 0 or x == float("inf") for x in w) or sum(w) <= 0:
        raise ValueError(f"teacher_weights must be finite, >= 0 and not all 0, got {w}")
    total = sum(w)
    return tuple(x / total for x in w)


def as_teacher_list(teacher: TeacherOutputs, num_teachers: int) -> list[ModelOutput]:
    """The M teacher outputs; a wrong count raises."""
    if isinstance(teacher, ModelOutput) or teacher is None or not isinstance(teacher, Sequence):
        raise ValueError(f"this ensemble objective needs a list of {num_teachers} teacher outputs, got {type(teacher).__name__}")
    if len(teacher) != num_teachers:
        raise ValueError(f"expected {num_teachers} teacher outputs, got {len(teacher)}")
    return list(teacher)


def ensemble_kd_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    temperature: float,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """T^2 * KL(q || softmax(s/T)) with q = sum_m w_m softmax(t_m/T) (mean by default).

    Args:
        student_logits: (B, C).  teacher_logits: M tensors (B, C), no gradient.
    Returns:
        scalar, averaged over the batch.
    """
    w = normalise_weights(weights, len(teacher_logits))
    target = sum(wm * F.softmax(t.detach().float() / temperature, dim=1) for wm, t in zip(w, teacher_logits))
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, target, reduction="batchmean") * temperature**2


class EnsembleKDDistiller(Distiller):
    """``{"ce": gamma * CE, "kd": alpha * ensemble_kd_loss(...)}`` for M teachers."""

    def __init__(
        self,
        num_teachers: int,
        *,
        gamma: float = 1.0,
        alpha: float = 1.0,
        temperature: float = 4.0,
        teacher_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.gamma = check_weight("gamma", gamma)
        self.alpha = check_weight("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.num_teachers = int(num_teachers)
        self.teacher_weights = normalise_weights(teacher_weights, self.num_teachers)

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        ts = as_teacher_list(teacher, self.num_teachers)
        kd = ensemble_kd_loss(student.logits, [t.logits for t in ts], self.temperature, self.teacher_weights)
        return {"ce": self.gamma * F.cross_entropy(student.logits, labels), "kd": self.alpha * kd}


class EnsembleCRDDistiller(ContrastiveDistiller):
    """``{"ce": gamma * CE, "crd": beta * sum_m w_m CRD_m}``.

    One :class:`CRDLoss` (head pair + memory-bank pair) per teacher, in
    ``self.crds``; all teachers share the batch's negatives.

    Args:
        student_dim: student embedding size.  teacher_dims: M teacher embedding sizes.
        train_labels: (N,) training labels.  teacher_weights: M weights or None (uniform).
        Other arguments as :class:`~orchestrator.distill.crd.CRDDistiller`.
    """

    use_kd = False  # EnsembleCRDKDDistiller adds the ensemble KD term
    alpha: float = 0.0
    temperature: float = 4.0

    def __init__(
        self,
        student_dim: int,
        teacher_dims: Sequence[int],
        train_labels: Tensor,
        *,
        teacher_weights: Sequence[float] | None = None,
        gamma: float = 1.0,
        beta: float = 0.8,
        feat_dim: int = 128,
        nce_k: int = 4096,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        z_mode: str = "fixed",
        negatives_mode: str = "exact",
        negatives: str = "class",
        seed: int = 0,
    ):
        super().__init__()
        self.gamma = check_weight("gamma", gamma)
        self.beta = check_weight("beta", beta)
        self.num_teachers = len(teacher_dims)
        self.teacher_weights = normalise_weights(teacher_weights, self.num_teachers)
        self._init_negatives(train_labels, nce_k, negatives, negatives_mode, seed)
        self.crds = nn.ModuleList(
            CRDLoss(student_dim, dim, self.n_data, feat_dim, nce_t, momentum, z_mode, seed=seed + 1 + m)
            for m, dim in enumerate(teacher_dims)
        )

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        ts = as_teacher_list(teacher, self.num_teachers)
        terms = {"ce": self.gamma * F.cross_entropy(student.logits, labels)}
        if self.use_kd:
            kd = ensemble_kd_loss(student.logits, [t.logits for t in ts], self.temperature, self.teacher_weights)
            terms["kd"] = self.alpha * kd
        negatives = self.draw_negatives(indices, labels)
        crd = sum(
            w * loss(student.embedding, t.embedding, indices, negatives)
            for w, loss, t in zip(self.teacher_weights, self.crds, ts)
        )
        terms["crd"] = self.beta * crd
        return terms


class EnsembleCRDKDDistiller(EnsembleCRDDistiller):
    """``{"ce": gamma * CE, "kd": alpha * ensemble KD, "crd": beta * sum_m w_m CRD_m}``."""

    use_kd = True

    def __init__(
        self,
        student_dim: int,
        teacher_dims: Sequence[int],
        train_labels: Tensor,
        *,
        alpha: float = 1.0,
        temperature: float = 4.0,
        **crd_kwargs: Any,
    ):
        super().__init__(student_dim, teacher_dims, train_labels, **crd_kwargs)
        self.alpha = check_weight("alpha", alpha)
        self.temperature = check_temperature(temperature)
