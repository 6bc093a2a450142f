"""Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022, arXiv 2203.08679).

KD split in two: TCKD, the KL between teacher and student binary distributions
(target class vs all the others), and NCKD, the KL between their distributions
over the non-target classes alone; ``alpha * TCKD + beta * NCKD``, each scaled
by T^2 and averaged over the batch. The authors' code is mdistiller
(megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``);
``tests/test_distill_dkd.py`` pins our values to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.distill.ce import check_weight
from orchestrator.distill.kd import as_single_teacher, check_temperature
from orchestrator.models.base import ModelOutput

# The paper's CIFAR-100 settings (mdistiller mdistiller/engine/cfg.py CFG.DKD, used as they are by
# configs/cifar100/dkd/res32x4_res8x4.yaml; other pairs change only beta, to 2.0 or 6.0), at commit
# a08d46f10d6102bd6e3f258ca5ac880b020ea259, as config keys: the first points a sweep evaluates.
# The warm-up counts epochs (20 of mdistiller's 240); a short schedule may want it lower.
PAPER_DEFAULTS = {
    "distill.gamma": 1.0,
    "distill.dkd.alpha": 1.0,
    "distill.dkd.beta": 8.0,
    "distill.dkd.temperature": 4.0,
    "distill.dkd.warmup": 20,
}


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """``T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.

    Args:
        student_logits, teacher_logits: (B, C) with C >= 2; the teacher side gets no gradient.
            Computed in float32 at least (float64 stays float64).
        labels: (B,) target classes in [0, C).
        alpha: TCKD weight; beta: NCKD weight; temperature: T > 0.
    Returns:
        scalar.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(
            f"student and teacher logits must both be (B, C) with C >= 2, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half -> float32; float64 stays
    s = student_logits.to(dtype) / temperature
    t = teacher_logits.detach().to(dtype) / temperature
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


class DKDDistiller(Distiller):
    """``{"ce": gamma * CE, "dkd": w * dkd_loss(student, teacher, labels, alpha, beta, T)}``.

    ``w = min((epoch + 1) / warmup, 1)`` ramps the DKD term up linearly over the first ``warmup``
    epochs (mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epochs); ``warmup = 0`` turns
    the ramp off. The Trainer calls :meth:`set_epoch` with its 0-based epoch before each epoch.
    """

    def __init__(
        self, gamma: float = 1.0, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 20
    ):
        super().__init__()
        self.gamma = check_weight("gamma", gamma)
        self.alpha = check_weight("alpha", alpha)
        self.beta = check_weight("beta", beta)
        self.temperature = check_temperature(temperature)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an integer number of epochs >= 0, got {warmup!r}")
        self.warmup = warmup
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def warmup_factor(self) -> float:
        return 1.0 if self.warmup == 0 else min((self.epoch + 1) / self.warmup, 1.0)

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        t = as_single_teacher(teacher)
        dkd = dkd_loss(student.logits, t.logits, labels, self.alpha, self.beta, self.temperature)
        return {
            "ce": self.gamma * F.cross_entropy(student.logits, labels),
            "dkd": self.warmup_factor * dkd,
        }
