"""Activation boundaries, AB (Heo, Lee, Yun & Choi, AAAI 2019).

A connector maps each chosen student stage to the paired teacher stage's shape; AB then penalises, per
neuron, the connector output's side of the activation boundary disagreeing with the teacher's, with margin
m: ``(s + m)^2 [s > -m and t <= 0] + (s - m)^2 [s <= m and t > 0]``, summed over the map, divided by B,
scaled by 3/1000 and by ``2^(i - n + 1)`` for the i-th of n stages (the last counts 1), summed over stages
(RepDistiller ``distiller_zoo/AB.py`` on ``feat[1:-1]``). AB is an initialisation: RepDistiller trains the
connectors and the student's feature layers on it for ``--init_epochs`` (``helper/pretrain.py``), then
distils with CE alone (``train_distill`` sets the AB loss to 0 whatever ``-b`` is), so the main-stage
weight defaults to 0.

Differences from RepDistiller: its features are pre-activation (``preact=True``); our models return their
stage outputs as RepDistiller's non-preact call does: after the ReLU on the ResNets, VGGs and ShuffleNets, but
pre-activation sums on the WRNs and linear bottleneck outputs (signed) on MobileNetV2. The teacher's boundary
(t > 0) is therefore RepDistiller's on the WRNs and MobileNetV2, and its post-ReLU version (t > 0 where the
pre-activation is > 0: the same set) on the others; the student side always goes
through a connector (conv + BatchNorm, signed output), where RepDistiller uses none when the shapes
already match. With M teachers: ``sum_m w_m AB_m``, one set of connectors per teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from orchestrator.distill.base import Batch, TermContext
from orchestrator.distill.checks import check_epochs, check_positive, check_weight
from orchestrator.distill.features import ConnectedStages, at_least_fp32, feature_needs, paired_positions, parse_stages
from orchestrator.distill.registry import TermSpec, register_term

SCALE = 3 / 1000  # RepDistiller's scaling of each stage's loss

# The paper's settings (RepDistiller at commit b84f547c5db6a35318d4671d7d5c4de74c822403): 30 init epochs
# (train_student.py --init_epochs), margin 1 (distiller_zoo/AB.py); main-stage weight 0 (the CIFAR script
# passes -b 1, but helper/loops.py train_distill uses loss_kd = 0 for abound).
PAPER_DEFAULTS = {"distill.ab.weight": 0.0, "distill.ab.init_epochs": 30, "distill.ab.margin": 1.0}


@dataclass
class ABKnobs:
    """``distill.ab.*``: stages, margin m, pre-stage epochs, main-stage weight.

    init_epochs: the paper's 30 precede 240 epochs of distillation; our sweeps train ~5 epochs and the
    pre-stage runs inside the first reported epoch, so the default is 1 (a trial costs 1/epochs more,
    and every trial of the method reports comparable epochs). paper_defaults keep 30.
    """

    stages: str = "1:"  # RepDistiller's feat[1:-1]: every stage but the stem
    margin: float = 1.0  # m: how far past the teacher's activation boundary the connector output must be
    init_epochs: int = 1  # pre-stage epochs training the connectors on AB (the paper's 30 in paper_defaults)
    weight: float = 0.0  # the AB term's weight after the pre-stage (0: CE alone, as RepDistiller)

    def __post_init__(self):
        parse_stages("stages", self.stages)
        check_positive("margin", self.margin)
        check_epochs("init_epochs", self.init_epochs)
        check_weight("weight", self.weight)


def boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Sum over all entries of the margin penalty; source (connector output) and target of one shape."""
    source = at_least_fp32(source)
    positive = target.detach() > 0
    below = (source + margin).pow(2) * ((source > -margin) & ~positive)
    above = (source - margin).pow(2) * ((source <= margin) & positive)
    return (below + above).sum()


def ab_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """sum_i 2^(i - n + 1) * 3/1000 * boundary_loss(s_i, t_i) / B over n stage pairs of equal shapes."""
    n = len(student)
    if n != len(teacher) or n == 0:
        raise ValueError(f"AB needs one or more paired stages, got {len(student)} and {len(teacher)}")
    batch = student[0].shape[0]
    return sum(2.0 ** (i - n + 1) * SCALE * boundary_loss(s, t, margin) / batch
               for i, (s, t) in enumerate(zip(student, teacher)))


class Connector(nn.Sequential):
    """Student map (Cs, Hs, Ws) -> teacher shape (Ct, Ht, Wt): a conv chosen by the sizes, then BatchNorm.

    Hs = 2 Ht: 3x3 stride 2; 2 Hs = Ht: 4x4 transposed conv stride 2; Hs >= Ht: a (1 + Hs - Ht) x
    (1 + Ws - Wt) conv (1x1 at equal sizes). A smaller student map otherwise is refused.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int]):
        (c_s, h_s, w_s), (c_t, h_t, w_t) = s_shape, t_shape
        if (h_s, w_s) == (2 * h_t, 2 * w_t):
            conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif (2 * h_s, 2 * w_s) == (h_t, w_t):
            conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        elif h_s >= h_t and w_s >= w_t:
            conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
        else:
            raise ValueError(f"no connector from a student map {tuple(s_shape)} to a larger teacher map "
                             f"{tuple(t_shape)}; choose other stages (distill.ab.stages)")
        super().__init__(conv, nn.BatchNorm2d(c_t))
        self.shapes = (tuple(s_shape), tuple(t_shape))


class AB(ConnectedStages):
    """``sum_m w_m ab_loss(connectors_m(student stages), teacher_m stages)``; the pre-stage loss is the same.

    Args: as :class:`ConnectedStages` (connectors: per teacher, one :class:`Connector` per stage), and
    the margin m > 0.
    """

    def __init__(self, student_positions: Sequence[int], teacher_positions: Sequence[Sequence[int]],
                 connectors: Sequence[nn.ModuleList], teacher_weights: Sequence[float], margin: float = 1.0):
        super().__init__(student_positions, teacher_positions, connectors, teacher_weights)
        self.margin = check_positive("margin", margin)

    def stage_loss(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        return ab_loss(student, teacher, self.margin)

    def use_identity_parts(self) -> None:
        """Identity connectors: the boundary loss of the student maps themselves (needs the teacher's shapes)."""
        for conn in self.connectors:
            for c in conn:
                if c.shapes[0] != c.shapes[1]:
                    raise ValueError(f"AB: an identity connector needs maps of one shape, got student {c.shapes[0]} "
                                     f"and teacher {c.shapes[1]}")
        self.connectors = nn.ModuleList(nn.ModuleList(nn.Identity() for _ in conn) for conn in self.connectors)

    def pre_stage_loss(self, batch: Batch) -> Tensor:
        return self.forward(batch)


def build(ctx: TermContext, knobs: ABKnobs) -> AB:
    s_pos, t_pos = paired_positions("distill.ab.stages", parse_stages("stages", knobs.stages), ctx.student,
                                    ctx.teachers)
    s_shapes = list(ctx.student.stages.values())
    connectors = []
    for teacher, pos in zip(ctx.teachers, t_pos):
        t_shapes = list(teacher.stages.values())
        connectors.append(nn.ModuleList(Connector(s_shapes[i], t_shapes[j]) for i, j in zip(s_pos, pos)))
    return AB(s_pos, t_pos, connectors, ctx.teacher_weights, knobs.margin)


register_term(TermSpec(
    name="ab",
    reference="Heo et al., AAAI 2019; RepDistiller b84f547 distiller_zoo/AB.py",
    build=build,
    knobs=ABKnobs,
    needs=lambda k: feature_needs(parse_stages("stages", k.stages)),
    multi_teacher="per_teacher",
    parts=("connectors (conv + BatchNorm per stage)",),
    pre_stage="init_epochs",
    paper_defaults=PAPER_DEFAULTS,
))
