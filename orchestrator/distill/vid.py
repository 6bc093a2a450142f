"""Variational information distillation, VID (Ahn et al., CVPR 2019), as RepDistiller runs it in the CRD paper.

For each paired stage, a regressor (three 1x1 convolutions without bias, ReLU between, Cs -> Ct ->
Ct -> Ct) predicts the mean of a Gaussian over the teacher's map from the student's, with one
learnable variance per teacher channel, ``softplus(log_scale) + eps`` (starting at ``init_pred_var``);
the term is the Gaussian negative log-likelihood ``0.5 * ((mu - t)^2 / var + log var)`` averaged over
the map, summed over the stage pairs. Maps of different spatial sizes are compared at the smaller one
(the larger is average-pooled), as RepDistiller does. With M teachers: one regressor per teacher and
stage pair, the M terms weighted by the teacher weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import KnobError, check_positive, check_weight, normalise_weights
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term
from orchestrator.distill.stages import check_selector, pair, pool_to_smaller
from orchestrator.models.base import Shapes

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, VID: --distill vid -a 0 -b 1;
# distiller_zoo/VID.py init_pred_var=5.0, eps=1e-5 on feat[1:-1] = our stages "1:"; at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403).
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.vid.weight": 1.0, "distill.vid.init_pred_var": 5.0,
                  "distill.vid.stages": "1:"}
EPS = 1e-5  # the variance's floor


@dataclass
class VIDKnobs:
    """``distill.vid.*``: the stages (a selector, see ``distill/stages.py``), the initial predicted variance
    and the weight."""

    stages: str = "1:"  # the stages whose variational information is maximised: a stage selector (distill/stages.py)
    init_pred_var: float = 5.0  # the initial predicted variance
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        self.stages = check_selector("stages", self.stages)
        if not check_positive("init_pred_var", self.init_pred_var) > EPS:
            raise KnobError("init_pred_var", self.init_pred_var, f"> {EPS}")
        check_weight("weight", self.weight)


class VIDRegressor(nn.Module):
    """Gaussian over a teacher map (B, Ct, H, W) given the student's (B, Cs, H, W): mean by 1x1 convs, one
    learnable variance per teacher channel; ``forward`` returns the mean negative log-likelihood."""

    def __init__(self, student_channels: int, teacher_channels: int, init_pred_var: float = 5.0):
        super().__init__()
        c_s, c_t = student_channels, teacher_channels
        self.mean = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False),
        )
        v = init_pred_var - EPS  # softplus(log_scale) = v: log_scale = log(exp(v) - 1), written stably
        self.log_scale = nn.Parameter(torch.full((c_t,), v + math.log(-math.expm1(-v))))

    def variance(self) -> Tensor:
        """(Ct,) predicted variances."""
        return F.softplus(self.log_scale) + EPS

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        f_s, f_t = pool_to_smaller(f_s, f_t.detach())
        var = self.variance().view(1, -1, 1, 1)
        mu = self.mean(f_s).float()
        return (0.5 * ((mu - f_t.float()).pow(2) / var + var.log())).mean()


class VID(Term):
    """``sum_m w_m sum_(s, t) regressor_(m, s, t)(student[s], teacher_m[t])`` over each teacher's stage pairs."""

    def __init__(self, student: Shapes, teachers: Sequence[Shapes], teacher_weights: Sequence[float] | None = None,
                 stages: str = "1:", init_pred_var: float = 5.0):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teachers))
        self.pairs = [pair(stages, student, t, "distill.vid.stages") for t in teachers]
        s_shapes = list(student.stages.values())
        self.regressors = nn.ModuleList(
            nn.ModuleList(VIDRegressor(s_shapes[i][0], list(t.stages.values())[j][0], init_pred_var) for i, j in pairs)
            for t, pairs in zip(teachers, self.pairs)
        )

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.pairs):
            raise ValueError(f"VID was built for {len(self.pairs)} teacher(s), got {len(batch.teachers)}")
        s = batch.student.features
        return sum(w * sum(reg(s[i], teacher.features[j]) for reg, (i, j) in zip(regs, pairs))
                   for w, regs, pairs, teacher in zip(self.teacher_weights, self.regressors, self.pairs,
                                                      batch.teachers))


def build(ctx: TermContext, knobs: VIDKnobs) -> VID:
    return VID(ctx.student, ctx.teachers, ctx.teacher_weights, knobs.stages, knobs.init_pred_var)


register_term(TermSpec(
    name="vid",
    reference="Ahn et al., CVPR 2019; RepDistiller b84f547 distiller_zoo/VID.py",
    build=build,
    knobs=VIDKnobs,
    needs=lambda knobs: Needs(stages=(knobs.stages,)),
    multi_teacher="per_teacher",
    parts=("regressors with learnable variances",),
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("vid", ("ce", "vid"), PAPER_DEFAULTS)
