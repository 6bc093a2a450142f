"""Similarity-preserving distillation, SP (Tung & Mori, ICCV 2019), as RepDistiller runs it in the CRD paper.

A stage's (B, B) similarity matrix is the Gram matrix of the flattened activations with each row
L2-normalised; the term is the squared Frobenius distance between the student's and the teacher's
matrices divided by B^2, summed over the paired stages (RepDistiller uses one: the last feature map,
our stage ``-1``). Any shapes compare, since only the batch's similarities are matched. No trainable
parts. With M teachers: the M terms weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_weight, normalise_weights
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term
from orchestrator.distill.stages import check_selector, pair
from orchestrator.models.base import Shapes

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, SP: --distill similarity -a 0 -b 3000;
# helper/loops.py: [feat[-2]] = our stage "-1"; at commit b84f547c5db6a35318d4671d7d5c4de74c822403).
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.sp.weight": 3000.0, "distill.sp.stages": "-1"}


@dataclass
class SPKnobs:
    """``distill.sp.*``: the stages (a selector, see ``distill/stages.py``) and the weight."""

    stages: str = "-1"  # the stages whose similarity matrices are matched: a stage selector (distill/stages.py)
    weight: float = 3000.0  # the term's weight

    def __post_init__(self):
        self.stages = check_selector("stages", self.stages)
        check_weight("weight", self.weight)


def similarity(f: Tensor) -> Tensor:
    """(B, ...) -> (B, B): Gram matrix of the flattened samples, each row L2-normalised (float32 at least)."""
    x = f.float().flatten(1)
    return F.normalize(x @ x.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """||similarity(f_t) - similarity(f_s)||_F^2 / B^2 for (B, ...) maps of any shapes; the teacher side gets
    no gradient."""
    b = f_s.shape[0]
    return (similarity(f_t.detach()) - similarity(f_s)).pow(2).sum() / (b * b)


class SP(Term):
    """``sum_m w_m sum_(s, t) sp_loss(student[s], teacher_m[t])`` over the stage pairs of each teacher."""

    def __init__(self, student: Shapes, teachers: Sequence[Shapes], teacher_weights: Sequence[float] | None = None,
                 stages: str = "-1"):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teachers))
        self.pairs = [pair(stages, student, t, "distill.sp.stages") for t in teachers]

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.pairs):
            raise ValueError(f"SP was built for {len(self.pairs)} teacher(s), got {len(batch.teachers)}")
        s = batch.student.features
        return sum(w * sum(sp_loss(s[i], teacher.features[j]) for i, j in pairs)
                   for w, pairs, teacher in zip(self.teacher_weights, self.pairs, batch.teachers))


def build(ctx: TermContext, knobs: SPKnobs) -> SP:
    return SP(ctx.student, ctx.teachers, ctx.teacher_weights, knobs.stages)


register_term(TermSpec(
    name="sp",
    reference="Tung & Mori, ICCV 2019; RepDistiller b84f547 distiller_zoo/SP.py",
    build=build,
    knobs=SPKnobs,
    needs=lambda knobs: Needs(stages=(knobs.stages,)),
    multi_teacher="per_teacher",
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("sp", ("ce", "sp"), PAPER_DEFAULTS)
