"""Neural selectivity transfer, NST (Huang & Wang, "Like What You Like", 2017).

At each chosen stage, every channel's spatial map (L2-normalised over positions) is one sample of the
network's distribution of neuron selectivities; NST is the squared MMD between the student's and the
teacher's sets of channel maps under the polynomial kernel ``k(a, b) = (a . b)^2``:
``mean k(t, t') + mean k(s, s') - 2 mean k(s, t)``, summed over the stages (RepDistiller
``distiller_zoo/NST.py`` on ``feat[1:-1]``). Channel counts may differ; a larger map is average-pooled to
the smaller one's size. With M teachers: ``sum_m w_m NST(student, teacher_m)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_weight, normalise_weights
from orchestrator.distill.features import at_least_fp32, feature_needs, paired_positions, parse_stages
from orchestrator.distill.registry import TermSpec, register_term
from orchestrator.distill.stages import pool_to_smaller

# The paper's weight (RepDistiller scripts/run_cifar_distill.sh, NST: -a 0 -b 50, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403). The stages, feat[1:-1] there, are "1:" on every zoo model.
PAPER_DEFAULTS = {"distill.nst.weight": 50.0}


@dataclass
class NSTKnobs:
    """``distill.nst.*``: the stages (selectors, see :mod:`orchestrator.distill.features`) and the weight."""

    stages: str = "1:"  # RepDistiller's feat[1:-1]: every stage but the stem
    weight: float = 50.0  # the term's weight

    def __post_init__(self):
        parse_stages("stages", self.stages)
        check_weight("weight", self.weight)


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """mean over the batch and all channel pairs of (a_i . b_j)^2; a (B, Ca, P), b (B, Cb, P)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared polynomial-kernel MMD between channel maps: (B, Cs, Hs, Ws), (B, Ct, Ht, Wt) -> scalar.

    The teacher side gets no gradient; zero when both maps are equal.
    """
    s, t = pool_to_smaller(at_least_fp32(student), at_least_fp32(teacher.detach()))
    s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)
    return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


class NST(Term):
    """``sum_m w_m sum_stages nst_loss(student stage, teacher_m stage)``.

    Args:
        student_positions: positions of the chosen stages in the student's features.
        teacher_positions: per teacher, the positions of the paired stages.
        teacher_weights: M weights.
    """

    def __init__(self, student_positions: Sequence[int], teacher_positions: Sequence[Sequence[int]],
                 teacher_weights: Sequence[float]):
        super().__init__()
        self.s_pos, self.t_pos = list(student_positions), [list(p) for p in teacher_positions]
        self.teacher_weights = normalise_weights(teacher_weights, len(self.t_pos))

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.t_pos):
            raise ValueError(f"NST was built for {len(self.t_pos)} teacher(s), got {len(batch.teachers)}")
        f_s = batch.student.features
        return sum(w * sum(nst_loss(f_s[i], t.features[j]) for i, j in zip(self.s_pos, pos))
                   for w, pos, t in zip(self.teacher_weights, self.t_pos, batch.teachers))


def build(ctx: TermContext, knobs: NSTKnobs) -> NST:
    s_pos, t_pos = paired_positions("distill.nst.stages", parse_stages("stages", knobs.stages), ctx.student,
                                    ctx.teachers)
    return NST(s_pos, t_pos, ctx.teacher_weights)


register_term(TermSpec(
    name="nst",
    reference="Huang & Wang, 2017; RepDistiller b84f547 distiller_zoo/NST.py",
    build=build,
    knobs=NSTKnobs,
    needs=lambda k: feature_needs(parse_stages("stages", k.stages)),
    multi_teacher="per_teacher",
    paper_defaults=PAPER_DEFAULTS,
))
