"""Classic knowledge distillation (Hinton et al. 2015), for one teacher or an ensemble's mean prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_positive, normalise_weights
from orchestrator.distill.registry import LOGITS, Needs, TermSpec, register_preset, register_term

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, KD: -r 0.1 -a 0.9 -b 0, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403; train_student.py defaults), as config keys:
# the first points a sweep evaluates (sweep.paper_defaults).
PAPER_DEFAULTS = {"distill.gamma": 0.1, "distill.alpha": 0.9, "distill.kd.temperature": 4.0}


@dataclass
class KDKnobs:
    """``distill.kd.*``; the weight is ``distill.alpha``."""

    temperature: float = 4.0

    def __post_init__(self):
        check_positive("temperature", self.temperature)


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


class KD(Term):
    """kd_loss against the one teacher; with M teachers, against their weighted mean softmax."""

    def __init__(self, temperature: float = 4.0, teacher_weights: Sequence[float] = (1.0,)):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_weights))

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.teacher_weights):
            raise ValueError(f"KD was built for {len(self.teacher_weights)} teacher(s), got {len(batch.teachers)}")
        if len(batch.teachers) == 1:
            return kd_loss(batch.student.logits, batch.teachers[0].logits, self.temperature)
        return ensemble_kd_loss(batch.student.logits, [t.logits for t in batch.teachers], self.temperature,
                                self.teacher_weights)


def build(ctx: TermContext, knobs: KDKnobs) -> KD:
    return KD(knobs.temperature, ctx.teacher_weights)


register_term(TermSpec(
    name="kd",
    build=build,
    knobs=KDKnobs,
    weight_key="distill.alpha",
    needs=Needs(frozenset({LOGITS})),
    multi_teacher="outputs",
    paper_defaults={"distill.alpha": 0.9, "distill.kd.temperature": 4.0},
))
register_preset("kd", ("ce", "kd"), PAPER_DEFAULTS)
