"""FitNet hints (Romero et al., ICLR 2015), as RepDistiller runs it in the CRD paper.

A connector (conv, BatchNorm, ReLU) maps the student's hint stage onto the teacher's, and the term
is the mean squared error between the connector's output and the teacher's map. The connector's
convolution bridges the spatial sizes as RepDistiller's ``ConvReg`` does: stride-2 3x3 conv when the
student map is twice the teacher's height, stride-2 transposed 4x4 conv when it is half, a
``(1 + Hs - Ht) x (1 + Ws - Wt)`` conv when it is larger otherwise (1x1 when equal); other pairs are
refused when the term is built. FitNets' first stage (training the student up to the hint with the
connector alone) is the optional pre-stage ``hint_epochs``; RepDistiller's CIFAR runs skip it (0).
With M teachers: one connector per teacher, the M errors weighted by the teacher weights.

The default hint stage is the stage named ``stage2``: RepDistiller's ``--hint_layer 2`` (``feat[2]``) on every
zoo model, whose stages are ``stem, stage1, ...`` (its ``feat[0]`` is our stem), and the second stage of
models without a stem (the project's CNNs, ``tiny_*``, ``tv_*``, ``timm:*``), so that two-stage students have
it too; a position such as ``2`` would be absent there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_epochs, check_weight, normalise_weights
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term
from orchestrator.distill.stages import check_selector, positions
from orchestrator.models.base import Shapes

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, FitNet: --distill hint -a 0 -b 100, and
# train_student.py's --hint_layer 2 = feat[2] = our stage named stage2 on every zoo model; at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403), as config keys.
HINT_STAGE = "stage2"
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.fitnet.weight": 100.0, "distill.fitnet.stage": HINT_STAGE,
                  "distill.fitnet.hint_epochs": 0}
STAGE_KEY = "distill.fitnet.stage"


@dataclass
class FitNetKnobs:
    """``distill.fitnet.*``: the hint stage (a selector picking one stage of each model, see
    ``distill/stages.py``; default ``stage2``, see the module docstring), the hint pre-stage's epochs and the
    term's weight."""

    stage: str = HINT_STAGE  # the hint stage, one of each model: a stage selector (distill/stages.py)
    hint_epochs: int = 0  # pre-stage epochs training the student up to the hint with the connector alone; 0 = none
    weight: float = 100.0  # the term's weight

    def __post_init__(self):
        self.stage = check_selector("stage", self.stage)
        check_epochs("hint_epochs", self.hint_epochs)
        check_weight("weight", self.weight)


def hint_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Sequential:
    """conv -> BatchNorm -> ReLU from a student map (Cs, Hs, Ws) to the teacher's (Ct, Ht, Wt); ValueError
    naming both shapes when no convolution of RepDistiller's ``ConvReg`` rules bridges them."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = student, teacher
    if h_s == 2 * h_t:
        conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
    elif 2 * h_s == h_t:
        conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
    else:
        conv = None
    if conv is None or tuple(conv(torch.zeros(1, c_s, h_s, w_s)).shape[1:]) != (c_t, h_t, w_t):
        raise ValueError(f"{STAGE_KEY}: no hint connector maps the student's {tuple(student)} map onto the "
                         f"teacher's {tuple(teacher)} (the student map must be at least as large, or half as large); "
                         f"choose other stages")
    return nn.Sequential(conv, nn.BatchNorm2d(c_t), nn.ReLU(inplace=True))


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """FitNet's hint loss: mean squared error of the (connected) student map and the teacher's, both (B, C, H, W)
    of one shape, in float32 at least; no gradient to the teacher (RepDistiller's ``HintLoss``)."""
    return F.mse_loss(f_s.float(), f_t.detach().float())


class FitNet(Term):
    """``sum_m w_m MSE(connector_m(student[stage]), teacher_m[stage])``.

    Args:
        student: the student's Shapes; teachers: one Shapes per teacher; teacher_weights: M weights.
        stage: a selector picking one stage of each model.
    """

    def __init__(self, student: Shapes, teachers: Sequence[Shapes], teacher_weights: Sequence[float] | None = None,
                 stage: str = HINT_STAGE):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teachers))
        self.pairs: list[tuple[int, int]] = []
        self.hint_shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (student map, teacher map) per teacher
        connectors = []
        for teacher in teachers:
            (s, t) = (self._one(stage, shapes, who) for shapes, who in ((student, "the student"),
                                                                        (teacher, "the teacher")))
            self.pairs.append((s, t))
            self.hint_shapes.append((tuple(list(student.stages.values())[s]), tuple(list(teacher.stages.values())[t])))
            connectors.append(hint_connector(*self.hint_shapes[-1]))
        self.connectors = nn.ModuleList(connectors)

    def use_identity_parts(self) -> None:
        """Identity connectors: the MSE of the hint maps themselves (needs maps of one shape)."""
        for s_shape, t_shape in self.hint_shapes:
            if s_shape != t_shape:
                raise ValueError(f"FitNet: an identity connector needs hint maps of one shape, got student {s_shape} "
                                 f"and teacher {t_shape}")
        self.connectors = nn.ModuleList(nn.Identity() for _ in self.connectors)

    @staticmethod
    def _one(stage: str, shapes: Shapes, who: str) -> int:
        picked = positions(stage, shapes, who, STAGE_KEY)
        if len(picked) != 1:
            names = [list(shapes.stages)[i] for i in picked]
            raise ValueError(f"{STAGE_KEY}: {stage!r} picks {len(picked)} stages of {who} {names}; the hint is one stage")
        return picked[0]

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.connectors):
            raise ValueError(f"FitNet was built for {len(self.connectors)} teacher(s), got {len(batch.teachers)}")
        losses = [hint_loss(connector(batch.student.features[s]), teacher.features[t])
                  for connector, (s, t), teacher in zip(self.connectors, self.pairs, batch.teachers)]
        return sum(w * loss for w, loss in zip(self.teacher_weights, losses))

    def pre_stage_loss(self, batch: Batch) -> Tensor:
        """FitNets' first stage: the hint loss alone trains the student up to its hint stage and the connectors."""
        return self.forward(batch)


def build(ctx: TermContext, knobs: FitNetKnobs) -> FitNet:
    return FitNet(ctx.student, ctx.teachers, ctx.teacher_weights, knobs.stage)


register_term(TermSpec(
    name="fitnet",
    reference="Romero et al., ICLR 2015; RepDistiller b84f547 distiller_zoo/FitNet.py",
    build=build,
    knobs=FitNetKnobs,
    needs=lambda knobs: Needs(stages=(knobs.stage,)),
    multi_teacher="per_teacher",
    parts=("hint connectors",),
    pre_stage="hint_epochs",
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("fitnet", ("ce", "fitnet"), PAPER_DEFAULTS)
