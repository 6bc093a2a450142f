"""Classic knowledge distillation (Hinton et al. 2015), for one teacher or an ensemble's mean prediction.

``distill.kd.standardize`` z-scores the logits first (logit standardisation, Sun et al. 2024,
:mod:`orchestrator.distill.logit_std`); the temperature is then the paper's base temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_flag, check_positive, check_weight, normalise_weights
from orchestrator.distill.logit_std import tempered
from orchestrator.distill.registry import LOGITS, Needs, TermSpec, register_preset, register_term

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, KD: -r 0.1 -a 0.9 -b 0, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403; train_student.py defaults), as config keys:
# the first points a sweep evaluates (sweep.paper_defaults).
PAPER_DEFAULTS = {"distill.ce.weight": 0.1, "distill.kd.weight": 0.9, "distill.kd.temperature": 4.0}
# KD with logit standardisation (sunshangquan/logit-standardization-KD at commit
# f6e5aa5172bad618e801163c3385322eea673754: README "KD+Ours" = --logit-stand --base-temp 2 --kd-weight 9,
# tools/train.py; CE weight 0.1 from mdistiller/engine/cfg.py CFG.KD.LOSS.CE_WEIGHT): preset ``kd_ls``.
LS_PAPER_DEFAULTS = {"distill.ce.weight": 0.1, "distill.kd.weight": 9.0, "distill.kd.temperature": 2.0,
                     "distill.kd.standardize": True}


@dataclass
class KDKnobs:
    """``distill.kd.*``: the temperature, logit standardisation and the term's weight.

    standardize: z-score the logits before the softmax (logit standardisation); ``temperature`` is then
    the base temperature.
    """

    temperature: float = 4.0  # T of the softened softmax (the base temperature with standardize)
    standardize: bool = False  # z-score the logits before the softmax (logit standardisation)
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        check_flag("standardize", self.standardize)
        check_weight("weight", self.weight)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, standardize: bool = False) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    Args:
        student_logits, teacher_logits: (B, C); the teacher side gets no gradient.
        standardize: z-score both sides' logits first (logit standardisation; T = base temperature).
    Returns:
        scalar. Without standardisation its gradient wrt the student logits is
        T * (softmax(s/T) - softmax(t/T)) / B.
    """
    log_p_s = F.log_softmax(tempered(student_logits.float(), temperature, standardize), dim=1)
    log_p_t = F.log_softmax(tempered(teacher_logits.detach().float(), temperature, standardize), dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def ensemble_kd_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    temperature: float,
    weights: Sequence[float] | None = None,
    standardize: bool = False,
) -> Tensor:
    """T^2 * KL(q || softmax(s/T)) with q = sum_m w_m softmax(t_m/T) (mean by default).

    Args:
        student_logits: (B, C).  teacher_logits: M tensors (B, C), no gradient.
        standardize: z-score the student's and each teacher's logits first (logit standardisation).
    Returns:
        scalar, averaged over the batch.
    """
    w = normalise_weights(weights, len(teacher_logits))
    target = sum(wm * F.softmax(tempered(t.detach().float(), temperature, standardize), dim=1)
                 for wm, t in zip(w, teacher_logits))
    log_p_s = F.log_softmax(tempered(student_logits.float(), temperature, standardize), dim=1)
    return F.kl_div(log_p_s, target, reduction="batchmean") * temperature**2


class KD(Term):
    """kd_loss against the one teacher; with M teachers, against their weighted mean softmax."""

    def __init__(self, temperature: float = 4.0, teacher_weights: Sequence[float] = (1.0,), standardize: bool = False):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_weights))
        self.standardize = check_flag("standardize", standardize)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.teacher_weights):
            raise ValueError(f"KD was built for {len(self.teacher_weights)} teacher(s), got {len(batch.teachers)}")
        if len(batch.teachers) == 1:
            return kd_loss(batch.student.logits, batch.teachers[0].logits, self.temperature, self.standardize)
        return ensemble_kd_loss(batch.student.logits, [t.logits for t in batch.teachers], self.temperature,
                                self.teacher_weights, self.standardize)


def build(ctx: TermContext, knobs: KDKnobs) -> KD:
    return KD(knobs.temperature, ctx.teacher_weights, knobs.standardize)


register_term(TermSpec(
    name="kd",
    reference="Hinton et al. 2015; RepDistiller b84f547 distiller_zoo/KD.py",
    build=build,
    knobs=KDKnobs,
    needs=Needs(frozenset({LOGITS})),
    multi_teacher="outputs",
    paper_defaults={"distill.kd.weight": 0.9, "distill.kd.temperature": 4.0},
))
register_preset("kd", ("ce", "kd"), PAPER_DEFAULTS)
register_preset("kd_ls", ("ce", "kd"), LS_PAPER_DEFAULTS)
