"""Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022, arXiv 2203.08679).

KD split in two: TCKD, the KL between teacher and student binary distributions
(target class vs all the others), and NCKD, the KL between their distributions
over the non-target classes alone; ``alpha * TCKD + beta * NCKD``, each scaled
by T^2 and averaged over the batch. The authors' code is mdistiller
(megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``);
``tests/test_distill_dkd.py`` pins our values to it. ``distill.dkd.standardize`` z-scores the
logits first (logit standardisation, Sun et al. 2024, :mod:`orchestrator.distill.logit_std`; the
temperature is then the base temperature), pinned to the authors' DKD in the same test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_epochs, check_flag, check_positive, check_weight
from orchestrator.distill.logit_std import tempered
from orchestrator.distill.registry import LOGITS, Needs, TermSpec, register_preset, register_term

# The paper's CIFAR-100 settings (mdistiller mdistiller/engine/cfg.py CFG.DKD, used as they are by
# configs/cifar100/dkd/res32x4_res8x4.yaml; other pairs change only beta, to 2.0 or 6.0), at commit
# a08d46f10d6102bd6e3f258ca5ac880b020ea259, as config keys: the first points a sweep evaluates.
# The warm-up counts epochs (20 of mdistiller's 240); a short schedule may want it lower.
PAPER_DEFAULTS = {
    "distill.ce.weight": 1.0,
    "distill.dkd.alpha": 1.0,
    "distill.dkd.beta": 8.0,
    "distill.dkd.temperature": 4.0,
    "distill.dkd.warmup": 20,
}
# DKD with logit standardisation (sunshangquan/logit-standardization-KD at commit
# f6e5aa5172bad618e801163c3385322eea673754: README "DKD+Ours" = --logit-stand --base-temp 2 --kd-weight 9,
# which tools/train.py applies as alpha * 9, beta * 9 and T = 2): preset ``dkd_ls``; the factor 9 is the
# term's weight here.
LS_PAPER_DEFAULTS = {**PAPER_DEFAULTS, "distill.dkd.temperature": 2.0, "distill.dkd.weight": 9.0,
                     "distill.dkd.standardize": True}


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float, temperature: float,
    standardize: bool = False,
) -> Tensor:
    """``T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.

    Args:
        student_logits, teacher_logits: (B, C) with C >= 2; the teacher side gets no gradient.
            Computed in float32 at least (float64 stays float64).
        labels: (B,) target classes in [0, C).
        alpha: TCKD weight; beta: NCKD weight; temperature: T > 0.
        standardize: z-score both sides' logits first (logit standardisation; T = base temperature).
    Returns:
        scalar.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(
            f"student and teacher logits must both be (B, C) with C >= 2, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half -> float32; float64 stays
    s = tempered(student_logits.to(dtype), temperature, standardize)
    t = tempered(teacher_logits.detach().to(dtype), temperature, standardize)
    target = F.one_hot(labels, s.shape[1]).bool()  # (B, C)
    tckd = F.kl_div(_binary_log_probs(s, labels, target), _binary_log_probs(t, labels, target),
                    reduction="batchmean", log_target=True)
    nckd = F.kl_div(_non_target_log_probs(s, target), _non_target_log_probs(t, target),
                    reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


def _binary_log_probs(z: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """(B, 2): log P(target class), log P(any other class) under softmax(z)."""
    log_norm = torch.logsumexp(z, dim=1)
    log_target = z.gather(1, labels[:, None]).squeeze(1) - log_norm
    log_other = torch.logsumexp(z.masked_fill(target, float("-inf")), dim=1) - log_norm
    return torch.stack([log_target, log_other], dim=1)


def _non_target_log_probs(z: Tensor, target: Tensor) -> Tensor:
    """(B, C): log-softmax over the non-target classes; 0 at the target, whose KL term is then 0 on both sides."""
    return F.log_softmax(z.masked_fill(target, float("-inf")), dim=1).masked_fill(target, 0.0)


@dataclass
class DKDKnobs:
    """``distill.dkd.*``: TCKD weight alpha, NCKD weight beta, temperature T, warm-up epochs, the term's weight,
    and ``standardize`` (logit standardisation; T is then the base temperature)."""

    alpha: float = 1.0  # the target-class term's (TCKD) weight
    beta: float = 8.0  # the non-target term's (NCKD) weight
    temperature: float = 4.0  # T of the softmax (the base temperature with standardize)
    warmup: int = 20  # epochs over which the DKD term ramps up linearly; 0 = none
    weight: float = 1.0  # the DKD term's weight
    standardize: bool = False  # z-score the logits before the softmax (logit standardisation)

    def __post_init__(self):
        check_weight("alpha", self.alpha)
        check_weight("beta", self.beta)
        check_positive("temperature", self.temperature)
        check_epochs("warmup", self.warmup)
        check_weight("weight", self.weight)
        check_flag("standardize", self.standardize)


class DKD(Term):
    """``min((epoch + 1) / warmup, 1) * dkd_loss(student, teacher, labels, alpha, beta, T)``.

    The factor ramps the term up linearly over the first ``warmup`` epochs (mdistiller's
    ``min(epoch / warmup, 1)`` with its 1-based epochs); ``warmup = 0`` turns the ramp off.
    The Learner calls :meth:`set_epoch` with its 0-based epoch before each epoch.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20,
                 standardize: bool = False):
        super().__init__()
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.warmup = check_epochs("warmup", warmup)
        self.standardize = check_flag("standardize", standardize)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def warmup_factor(self) -> float:
        return 1.0 if self.warmup == 0 else min((self.epoch + 1) / self.warmup, 1.0)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != 1:
            raise ValueError(f"DKD needs exactly one teacher output, got {len(batch.teachers)}")
        dkd = dkd_loss(batch.student.logits, batch.teachers[0].logits, batch.labels, self.alpha, self.beta,
                       self.temperature, self.standardize)
        return self.warmup_factor * dkd


def build(ctx: TermContext, knobs: DKDKnobs) -> DKD:
    return DKD(knobs.alpha, knobs.beta, knobs.temperature, knobs.warmup, knobs.standardize)


register_term(TermSpec(
    name="dkd",
    reference="Zhao et al., CVPR 2022; mdistiller a08d46f distillers/DKD.py",
    build=build,
    knobs=DKDKnobs,
    needs=Needs(frozenset({LOGITS}), labels=True),
    multi_teacher=None,
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("dkd", ("ce", "dkd"), PAPER_DEFAULTS)
register_preset("dkd_ls", ("ce", "dkd"), LS_PAPER_DEFAULTS)
