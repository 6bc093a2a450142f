"""Flow of solution procedure, FSP (Yim, Joo, Bae & Kim, CVPR 2017).

The FSP matrix of two consecutive chosen stages is ``G[j, i] = mean_{h,w} bottom[i, h, w] * top[j, h, w]``
(the larger map average-pooled to the smaller's size first); the loss is the mean squared difference of
the student's and the teacher's FSP matrices, summed over consecutive pairs (RepDistiller
``distiller_zoo/FSP.py`` on ``feat[:-1]``). FSP is an initialisation: RepDistiller trains the student's
feature layers on it for ``--init_epochs`` (``helper/pretrain.py``) and then distils with CE alone (its
``train_distill`` sets the FSP loss to 0 whatever ``-b`` is), so the main-stage weight defaults to 0.

The matrices are channel x channel, so student and teacher channels must match per stage: ``connectors:
auto`` inserts a 1x1 conv where they differ (RepDistiller refuses such pairs; ``none`` does too). With M
teachers: ``sum_m w_m FSP_m``, one set of connectors per teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from orchestrator.distill.base import Batch, TermContext
from orchestrator.distill.checks import check_epochs, check_weight
from orchestrator.distill.features import (
    ConnectedStages, at_least_fp32, channel_connectors, check_connectors, feature_needs, paired_positions,
    parse_stages,
)
from orchestrator.distill.registry import TermSpec, register_term
from orchestrator.distill.stages import pool_to_smaller

# The paper's settings (RepDistiller at commit b84f547c5db6a35318d4671d7d5c4de74c822403): 30 init epochs
# (train_student.py --init_epochs); main-stage weight 0 (scripts/run_cifar_distill.sh passes -b 50, but
# helper/loops.py train_distill uses loss_kd = 0 for fsp).
PAPER_DEFAULTS = {"distill.fsp.weight": 0.0, "distill.fsp.init_epochs": 30}


@dataclass
class FSPKnobs:
    """``distill.fsp.*``: stages (two or more), connectors, pre-stage epochs, main-stage weight.

    init_epochs: the paper's 30 precede 240 epochs of distillation; our sweeps train ~5 epochs and the
    pre-stage runs inside the first reported epoch, so the default is 1 (a trial costs 1/epochs more,
    and every trial of the method reports comparable epochs). paper_defaults keep 30.
    """

    stages: str = "0:"  # RepDistiller's feat[:-1]: every stage, the stem included
    connectors: str = "auto"  # auto: a 1x1 conv where student and teacher channels differ; none: refuse such pairs
    init_epochs: int = 1  # pre-stage epochs training the student on FSP (the paper's 30 in paper_defaults)
    weight: float = 0.0  # the FSP term's weight after the pre-stage (0: CE alone, as RepDistiller)

    def __post_init__(self):
        parse_stages("stages", self.stages, at_least=2)
        check_connectors("connectors", self.connectors)
        check_epochs("init_epochs", self.init_epochs)
        check_weight("weight", self.weight)


def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices of consecutive maps: (B, C_i, H_i, W_i) -> (B, C_{i+1}, C_i) for each pair."""
    out = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        bottom, top = pool_to_smaller(at_least_fp32(bottom), at_least_fp32(top))
        out.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / (bottom.shape[2] * bottom.shape[3]))
    return out


def fsp_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """sum over consecutive pairs of mean((G_s - G_t)^2) (each pair's: :func:`fsp_losses`); channels equal per
    stage; no gradient to the teacher."""
    return sum(fsp_losses(student, teacher))


def fsp_losses(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> list[Tensor]:
    """One mean((G_s - G_t)^2) per consecutive pair of stages, as RepDistiller's ``loss_group``."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"FSP needs two or more paired stages, got {len(student)} and {len(teacher)}")
    g_s = fsp_matrices(student)
    with torch.no_grad():
        g_t = fsp_matrices([t.detach() for t in teacher])
    return [(s - t).pow(2).mean() for s, t in zip(g_s, g_t)]


class FSP(ConnectedStages):
    """``sum_m w_m fsp_loss(connected student stages, teacher_m stages)``; the pre-stage loss is the same."""

    def stage_loss(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        return fsp_loss(student, teacher)

    def pre_stage_loss(self, batch: Batch) -> Tensor:
        return self.forward(batch)


def build(ctx: TermContext, knobs: FSPKnobs) -> FSP:
    s_pos, t_pos = paired_positions("distill.fsp.stages", parse_stages("stages", knobs.stages, at_least=2),
                                    ctx.student, ctx.teachers, at_least=2)
    s_channels = [list(ctx.student.stages.values())[i][0] for i in s_pos]
    connectors = []
    for teacher, pos in zip(ctx.teachers, t_pos):
        t_channels = [list(teacher.stages.values())[j][0] for j in pos]
        connectors.append(channel_connectors("distill.fsp.connectors", knobs.connectors, s_channels, t_channels,
                                             "FSP (channel x channel matrices)"))
    return FSP(s_pos, t_pos, connectors, ctx.teacher_weights)


register_term(TermSpec(
    name="fsp",
    reference="Yim et al., CVPR 2017; RepDistiller b84f547 distiller_zoo/FSP.py",
    build=build,
    knobs=FSPKnobs,
    needs=lambda k: feature_needs(parse_stages("stages", k.stages, at_least=2)),
    multi_teacher="per_teacher",
    parts=("1x1 connectors where channel counts differ",),
    pre_stage="init_epochs",
    paper_defaults=PAPER_DEFAULTS,
))
