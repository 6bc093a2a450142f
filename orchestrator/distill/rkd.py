"""Relational knowledge distillation, RKD (Park et al., CVPR 2019), as RepDistiller runs it in the CRD paper.

On the embeddings: the distance term is the smooth-L1 loss between the student's and the teacher's
pairwise Euclidean distances, each divided by the mean of its non-zero distances; the angle term is
the smooth-L1 loss between the cosines of the angles ``(e_j - e_i, e_k - e_i)`` over all triples.
``distance_weight * distance + angle_weight * angle`` (25 and 50 in RepDistiller). Invariant to a
scale, rotation or shift of either embedding. No trainable parts. A batch of one sample has no pair
and gives 0. With M teachers: the M terms weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_weight, normalise_weights
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_preset, register_term

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, RKD: --distill rkd -a 0 -b 1;
# distiller_zoo/RKD.py w_d=25, w_a=50 on feat[-1] = our embedding; at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403).
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.rkd.weight": 1.0, "distill.rkd.distance_weight": 25.0,
                  "distill.rkd.angle_weight": 50.0}
EPS = 1e-12  # squared distances are clamped to it before the square root (finite gradients)


@dataclass
class RKDKnobs:
    """``distill.rkd.*``: the distance and angle weights inside the term, and the term's weight."""

    distance_weight: float = 25.0  # the distance-wise loss's weight inside the term
    angle_weight: float = 50.0  # the angle-wise loss's weight inside the term
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_weight("distance_weight", self.distance_weight)
        check_weight("angle_weight", self.angle_weight)
        check_weight("weight", self.weight)


def normalised_distances(e: Tensor) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances (0 on the diagonal) divided by the mean off-diagonal one."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=EPS).sqrt()
    d = d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))
    return d / d[d > 0].mean()


def angles(e: Tensor) -> Tensor:
    """(B, D) -> (B, B, B): at [i, j, k] the cosine between e_j - e_i and e_k - e_i (0 if j or k is i)."""
    u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # u[i, j] = unit(e_j - e_i)
    return u @ u.transpose(1, 2)


def rkd_loss(e_s: Tensor, e_t: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """``distance_weight * smooth_l1(distances) + angle_weight * smooth_l1(angles)`` of (B, Ds) and (B, Dt)
    embeddings (flattened if larger); the teacher side gets no gradient; 0 when B < 2."""
    s, t = e_s.float().flatten(1), e_t.detach().float().flatten(1)
    if s.shape[0] < 2:
        return s.sum() * 0.0
    with torch.no_grad():
        d_t, a_t = normalised_distances(t), angles(t)
    return (distance_weight * F.smooth_l1_loss(normalised_distances(s), d_t)
            + angle_weight * F.smooth_l1_loss(angles(s), a_t))


class RKD(Term):
    """``sum_m w_m rkd_loss(e_s, e_t_m)``."""

    def __init__(self, teacher_weights: Sequence[float] = (1.0,), distance_weight: float = 25.0,
                 angle_weight: float = 50.0):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_weights))
        self.distance_weight = check_weight("distance_weight", distance_weight)
        self.angle_weight = check_weight("angle_weight", angle_weight)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.teacher_weights):
            raise ValueError(f"RKD was built for {len(self.teacher_weights)} teacher(s), got {len(batch.teachers)}")
        return sum(w * rkd_loss(batch.student.embedding, t.embedding, self.distance_weight, self.angle_weight)
                   for w, t in zip(self.teacher_weights, batch.teachers))


def build(ctx: TermContext, knobs: RKDKnobs) -> RKD:
    return RKD(ctx.teacher_weights, knobs.distance_weight, knobs.angle_weight)


register_term(TermSpec(
    name="rkd",
    reference="Park et al., CVPR 2019; RepDistiller b84f547 distiller_zoo/RKD.py",
    build=build,
    knobs=RKDKnobs,
    needs=Needs(frozenset({EMBEDDING})),
    multi_teacher="per_teacher",
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("rkd", ("ce", "rkd"), PAPER_DEFAULTS)
