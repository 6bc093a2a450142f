"""KDSVD: knowledge distillation with singular value decomposition (Lee, Kim & Song, ECCV 2018).

At each chosen stage, a map (B, C, H, W) read as (B, HW, C) is summarised by its leading right singular
vectors (directions in channel space), each unit-normalised and scaled by the teacher's normalised leading
singular values. The student keeps ``k + 3`` candidates and uses, for each teacher vector, the one of
largest absolute cosine (sign-aligned). Between consecutive chosen stages, the Gaussian kernel
``exp(-(v_i[c] - v_{i-1}[c'])^2 / 8)`` of every channel pair is compared: the squared differences between
student and teacher kernels are summed and divided by B (RepDistiller ``distiller_zoo/KDSVD.py`` on
``feat[1:-1]``). Non-finite entries (degenerate SVDs) count 0, as there; non-finite gradients through the
student's SVD (repeated singular values, e.g. dead channels) are set to 0, which the reference does not do.

Student and teacher singular vectors live in channel space, so channel counts must match per stage:
``connectors: auto`` inserts a 1x1 conv where they differ (RepDistiller's pairs need none); ``none``
refuses such pairs. Singular-vector signs follow the SVD routine, so values may differ between CPU and GPU
by the sign convention, as the reference's do. With M teachers: ``sum_m w_m KDSVD_m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import TermContext
from orchestrator.distill.checks import check_count, check_weight
from orchestrator.distill.features import (
    ConnectedStages, at_least_fp32, channel_connectors, check_connectors, feature_needs, paired_positions,
    parse_stages,
)
from orchestrator.distill.registry import TermSpec, register_term

EXTRA_CANDIDATES = 3  # the student keeps k + 3 singular vectors to align with the teacher's k
RBF_SCALE = 8.0

# RepDistiller's scripts/run_cifar_distill.sh (commit b84f547c5db6a35318d4671d7d5c4de74c822403) has no
# KDSVD line; weight 1 as the CRD paper's comparison uses it; k = 1 is distiller_zoo/KDSVD.py's default.
PAPER_DEFAULTS = {"distill.kdsvd.weight": 1.0, "distill.kdsvd.k": 1}


@dataclass
class KDSVDKnobs:
    """``distill.kdsvd.*``: stages (two or more), k teacher singular vectors, connectors, weight."""

    stages: str = "1:"  # RepDistiller's feat[1:-1]: every stage but the stem
    k: int = 1  # the teacher's singular vectors compared per stage
    connectors: str = "auto"  # auto: a 1x1 conv where student and teacher channels differ; none: refuse such pairs
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        parse_stages("stages", self.stages, at_least=2)
        check_count("k", self.k)
        check_connectors("connectors", self.connectors)
        check_weight("weight", self.weight)


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _zero_nonfinite_grad(x: Tensor) -> Tensor:
    if x.requires_grad:
        x.register_hook(_finite)
    return x


def leading_singular(feature: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> right singular vectors (B, C, n') unit columns and singular values (B, n') unit rows,
    n' = min(n, C, HW); the SVD of the (B, HW, C) matrix, non-finite entries replaced by 0."""
    x = _zero_nonfinite_grad(at_least_fp32(feature).flatten(2).transpose(1, 2))  # (B, HW, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite(vh.transpose(1, 2))[:, :, :n]
    return F.normalize(v, dim=1), F.normalize(_finite(s)[:, :n], dim=1)


def align_signed(candidates: Tensor, targets: Tensor) -> Tensor:
    """For each target column, the candidate column of largest |cosine|, times the cosine's sign.

    candidates (B, C, n), targets (B, C, k) -> (B, C, k).
    """
    cosine = candidates.transpose(1, 2) @ targets  # (B, n, k)
    best = cosine.abs().amax(dim=1, keepdim=True)
    choose = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return candidates @ choose


def kdsvd_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], k: int = 1) -> Tensor:
    """KDSVD over consecutive pairs of stages; maps (B, C_i, H, W), student and teacher channels equal per stage.

    Returns the sum over pairs of ``sum (K_s - K_t)^2 / B`` (each pair's: :func:`kdsvd_losses`); the teacher
    side gets no gradient.
    """
    return sum(kdsvd_losses(student, teacher, k))


def kdsvd_losses(student: Sequence[Tensor], teacher: Sequence[Tensor], k: int = 1) -> list[Tensor]:
    """One value per consecutive pair of stages (n stages -> n - 1 values), as RepDistiller's ``loss_group``."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"KDSVD needs two or more paired stages, got {len(student)} and {len(teacher)}")
    losses, previous = [], None
    for f_s, f_t in zip(student, teacher):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(f"KDSVD needs equal channel counts per stage, got {f_s.shape[1]} and {f_t.shape[1]}")
        with torch.no_grad():
            v_t, s_t = leading_singular(f_t.detach(), k)
        v_s, _ = leading_singular(f_s, k + EXTRA_CANDIDATES)
        v_s = align_signed(v_s, v_t) * s_t[:, None, :]
        v_t = v_t * s_t[:, None, :]
        if previous is not None:
            v_sb, v_tb = previous
            k_s = torch.exp(-(v_s[:, :, None, :] - v_sb[:, None, :, :]).pow(2) / RBF_SCALE)
            k_t = torch.exp(-(v_t[:, :, None, :] - v_tb[:, None, :, :]).pow(2) / RBF_SCALE)
            losses.append(_finite((k_s - k_t).pow(2)).sum() / f_s.shape[0])
        previous = (v_s, v_t)
    return losses


class KDSVD(ConnectedStages):
    """``sum_m w_m kdsvd_loss(connected student stages, teacher_m stages)``; per teacher, 1x1 connectors
    where channel counts differ (``self.connectors[m][i]``, identity elsewhere)."""

    def __init__(self, student_positions: Sequence[int], teacher_positions: Sequence[Sequence[int]],
                 connectors: Sequence[nn.ModuleList], teacher_weights: Sequence[float], k: int = 1):
        super().__init__(student_positions, teacher_positions, connectors, teacher_weights)
        self.k = check_count("k", k)

    def stage_loss(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        return kdsvd_loss(student, teacher, self.k)


def build(ctx: TermContext, knobs: KDSVDKnobs) -> KDSVD:
    s_pos, t_pos = paired_positions("distill.kdsvd.stages", parse_stages("stages", knobs.stages, at_least=2),
                                    ctx.student, ctx.teachers, at_least=2)
    s_shapes = list(ctx.student.stages.values())
    connectors = []
    for m, (teacher, pos) in enumerate(zip(ctx.teachers, t_pos)):
        t_shapes = list(teacher.stages.values())
        smallest = min(min(t_shapes[j][0], t_shapes[j][1] * t_shapes[j][2]) for j in pos)
        if knobs.k > smallest:
            raise ValueError(f"distill.kdsvd.k={knobs.k} exceeds the singular vectors a chosen stage of teacher "
                             f"{m + 1} has (min(channels, H*W) = {smallest})")
        connectors.append(channel_connectors(
            "distill.kdsvd.connectors", knobs.connectors, [s_shapes[i][0] for i in s_pos],
            [t_shapes[j][0] for j in pos], "KDSVD (singular vectors in channel space)"))
    return KDSVD(s_pos, t_pos, connectors, ctx.teacher_weights, knobs.k)


register_term(TermSpec(
    name="kdsvd",
    reference="Lee et al., ECCV 2018; RepDistiller b84f547 distiller_zoo/KDSVD.py",
    build=build,
    knobs=KDSVDKnobs,
    needs=lambda k: feature_needs(parse_stages("stages", k.stages, at_least=2)),
    multi_teacher="per_teacher",
    parts=("1x1 connectors where channel counts differ",),
    paper_defaults=PAPER_DEFAULTS,
))
