"""Probabilistic knowledge transfer, PKT (Passalis & Tefas, ECCV 2018).

Each network's embeddings define, per sample, a distribution over the batch: the cosine similarities of
its embedding with every embedding of the batch, shifted to [0, 1] and normalised per row. PKT is the KL
divergence from the teacher's distributions to the student's, averaged over all B x B entries (RepDistiller
``distiller_zoo/PKT.py``, which reads ``feat[-1]``: the pooled penultimate vector, our ``embedding``).
The two embeddings may differ in size: only each network's own similarities are compared, so no connector
is needed. With M teachers: ``sum_m w_m PKT(student, teacher_m)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_weight, normalise_weights
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_term

EPS = 1e-7  # RepDistiller's eps, in the normalisation and inside the log

# The paper's weight (RepDistiller scripts/run_cifar_distill.sh, PKT: -a 0 -b 30000, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403), as a config key.
PAPER_DEFAULTS = {"distill.pkt.weight": 30000.0}


@dataclass
class PKTKnobs:
    """``distill.pkt.*``: the term's weight."""

    weight: float = 30000.0  # the term's weight

    def __post_init__(self):
        check_weight("weight", self.weight)


def similarity_distributions(x: Tensor) -> Tensor:
    """(B, D) -> (B, B): row i = ((cos(x_i, x_j) + 1) / 2)_j normalised to sum 1 (float32 at least)."""
    x = x.flatten(1).to(torch.promote_types(x.dtype, torch.float32))
    x = x / (x.norm(dim=1, keepdim=True) + EPS)
    x = x.masked_fill(torch.isnan(x), 0.0)
    sim = (x @ x.T + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean_ij p_t[i, j] log((p_t[i, j] + eps) / (p_s[i, j] + eps)) for embeddings (B, Ds) and (B, Dt).

    The teacher side gets no gradient. Zero when both networks see the same cosine similarities.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"PKT needs the same batch on both sides, got {student.shape[0]} and {teacher.shape[0]}")
    p_s = similarity_distributions(student)
    p_t = similarity_distributions(teacher.detach())
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


class PKT(Term):
    """``sum_m w_m pkt_loss(student embedding, teacher_m embedding)``."""

    def __init__(self, teacher_weights: Sequence[float] = (1.0,)):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_weights))

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.teacher_weights):
            raise ValueError(f"PKT was built for {len(self.teacher_weights)} teacher(s), got {len(batch.teachers)}")
        return sum(w * pkt_loss(batch.student.embedding, t.embedding)
                   for w, t in zip(self.teacher_weights, batch.teachers))


def build(ctx: TermContext, knobs: PKTKnobs) -> PKT:
    return PKT(ctx.teacher_weights)


register_term(TermSpec(
    name="pkt",
    reference="Passalis & Tefas, ECCV 2018; RepDistiller b84f547 distiller_zoo/PKT.py",
    build=build,
    knobs=PKTKnobs,
    needs=Needs(frozenset({EMBEDDING})),
    multi_teacher="per_teacher",
    paper_defaults=PAPER_DEFAULTS,
))
