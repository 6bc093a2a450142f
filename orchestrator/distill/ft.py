"""Factor transfer, FT (Kim, Park & Kwak, "Paraphrasing Complex Network", NeurIPS 2018).

A paraphraser (a convolutional autoencoder on the teacher's chosen stage, k = ``rate`` x its channels in
the bottleneck) is trained first, in the pre-stage, to reconstruct that map (mean squared error). During
distillation it is frozen and its encoder gives the teacher's factor; a translator (three conv-BN-LeakyReLU
layers) maps the student's chosen stage to a factor of the same width. The loss is the mean absolute
difference of the two factors after ``F(x) = normalize(mean_c x_c^2)`` (a larger map average-pooled to the
smaller one's size), as RepDistiller's ``distiller_zoo/FT.py``, ``models/util.py`` (Paraphraser without
BatchNorm, Translator with it) and ``helper/pretrain.py`` (the paraphraser's pre-stage) do on ``feat[-2]``,
the last stage's map. With M teachers: one paraphraser and translator per teacher, ``sum_m w_m FT_m``.

Differences from RepDistiller: its pre-stage uses lr 0.01 for ResNet/WRN students; ours uses the training
settings (see the Learner's pre-stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import KnobError, check_epochs, check_positive, check_weight, normalise_weights
from orchestrator.distill.features import at_least_fp32, feature_needs, parse_stages, positions
from orchestrator.distill.registry import TermSpec, register_term
from orchestrator.distill.stages import pool_to_smaller

SLOPE = 0.1  # LeakyReLU slope of paraphraser and translator

# The paper's settings (RepDistiller at commit b84f547c5db6a35318d4671d7d5c4de74c822403): weight 200
# (scripts/run_cifar_distill.sh, FT: -a 0 -b 200), 30 init epochs (train_student.py --init_epochs),
# paraphrase rate k = 0.5 (models/util.py).
PAPER_DEFAULTS = {"distill.ft.weight": 200.0, "distill.ft.init_epochs": 30, "distill.ft.rate": 0.5}


@dataclass
class FTKnobs:
    """``distill.ft.*``: the stage (one selector), paraphrase rate k, pre-stage epochs, weight.

    init_epochs: the paper's 30 precede 240 epochs of distillation; our sweeps train ~5 epochs and the
    pre-stage runs inside the first reported epoch, so the default is 1 (a trial costs 1/epochs more,
    and every trial of the method reports comparable epochs). paper_defaults keep 30.
    """

    stage: str = "last"  # the teacher and student stage paraphrased: a stage selector (distill/stages.py)
    rate: float = 0.5  # k: the paraphraser's bottleneck width as a fraction of the stage's channels
    init_epochs: int = 1  # pre-stage epochs training the paraphraser (the paper's 30 in paper_defaults)
    weight: float = 200.0  # the term's weight

    def __post_init__(self):
        if len(parse_stages("stage", self.stage)) != 1:
            raise KnobError("stage", self.stage, "one stage selector (a stage name, a position such as 'last' or '-k', or a one-stage slice)")
        check_positive("rate", self.rate)
        check_epochs("init_epochs", self.init_epochs)
        check_weight("weight", self.weight)


def _conv_stack(convs: Sequence[nn.Module], channels: Sequence[int], batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for conv, c in zip(convs, channels):
        layers += [conv, *([nn.BatchNorm2d(c)] if batch_norm else []), nn.LeakyReLU(SLOPE)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Autoencoder of a teacher map (B, C, H, W): encoder C -> C -> k -> k (3x3 convs), decoder k -> k -> C
    -> C (3x3 transposed convs), LeakyReLU after each, no BatchNorm."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = _conv_stack([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                                   [c, k, k], batch_norm=False)
        self.decoder = _conv_stack([nn.ConvTranspose2d(k, k, 3, 1, 1), nn.ConvTranspose2d(k, c, 3, 1, 1),
                                    nn.ConvTranspose2d(c, c, 3, 1, 1)], [k, c, c], batch_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of x."""
        return self.decoder(self.encoder(x))


def translator(channels: int, factor_channels: int) -> nn.Sequential:
    """Student map (B, C, H, W) -> factor (B, k, H, W): 3x3 convs C -> C -> k -> k, each BatchNorm + LeakyReLU."""
    c, k = channels, factor_channels
    return _conv_stack([nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, k, 3, 1, 1), nn.Conv2d(k, k, 3, 1, 1)],
                       [c, k, k], batch_norm=True)


def factor(x: Tensor) -> Tensor:
    """(B, k, H, W) -> (B, HW): the channel mean of x^2, L2-normalised per sample."""
    return F.normalize(at_least_fp32(x).pow(2).mean(1).flatten(1))


def ft_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """mean |F(s) - F(t)| after pooling the larger map to the smaller's size; no gradient to the teacher side."""
    s, t = pool_to_smaller(student_factor, teacher_factor.detach())
    return (factor(s) - factor(t)).abs().mean()


class FT(Term):
    """Per teacher a paraphraser (trained in the pre-stage, then frozen) and a translator (trained with the
    student): ``sum_m w_m ft_loss(translator_m(student stage), paraphraser_m.encoder(teacher_m stage))``."""

    def __init__(self, student_position: int, teacher_positions: Sequence[int], student_channels: int,
                 teacher_channels: Sequence[int], teacher_weights: Sequence[float], rate: float = 0.5):
        super().__init__()
        self.s_pos, self.t_pos = student_position, list(teacher_positions)
        widths = [int(c * rate) for c in teacher_channels]
        if min(widths) < 1:
            raise ValueError(f"distill.ft.rate={rate} leaves no factor channel for a teacher stage of "
                             f"{teacher_channels[widths.index(min(widths))]} channels")
        self.paraphrasers = nn.ModuleList(Paraphraser(c, k) for c, k in zip(teacher_channels, widths))
        self.translators = nn.ModuleList(translator(student_channels, k) for k in widths)
        self.teacher_weights = normalise_weights(teacher_weights, len(self.t_pos))

    def use_identity_parts(self) -> None:
        """Identity translator and paraphraser: the factor loss of the two maps themselves (RepDistiller's
        ``FactorTransfer()(f_s, f_t)``; any channel counts, the larger map pooled); the pre-stage loss is then 0."""
        self.translators = nn.ModuleList(nn.Identity() for _ in self.translators)
        for para in self.paraphrasers:
            para.encoder, para.decoder = nn.Identity(), nn.Identity()

    def _check(self, batch: Batch) -> None:
        if len(batch.teachers) != len(self.t_pos):
            raise ValueError(f"FT was built for {len(self.t_pos)} teacher(s), got {len(batch.teachers)}")

    def forward(self, batch: Batch) -> Tensor:
        self._check(batch)
        f_s = batch.student.features[self.s_pos]
        total = 0.0
        for w, para, trans, j, t in zip(self.teacher_weights, self.paraphrasers, self.translators, self.t_pos,
                                        batch.teachers):
            with torch.no_grad():  # the paraphraser is frozen after its pre-stage
                teacher_factor = para.encoder(t.features[j].detach())
            total = total + w * ft_loss(trans(f_s), teacher_factor)
        return total

    def pre_stage_loss(self, batch: Batch) -> Tensor:
        """sum_m w_m MSE(paraphraser_m(teacher map), teacher map): trains the paraphrasers only."""
        self._check(batch)
        return sum(w * F.mse_loss(para(t.features[j].detach()).float(), t.features[j].detach().float())
                   for w, para, j, t in zip(self.teacher_weights, self.paraphrasers, self.t_pos, batch.teachers))


def build(ctx: TermContext, knobs: FTKnobs) -> FT:
    key, sel = "distill.ft.stage", parse_stages("stage", knobs.stage)
    picked = [positions(key, sel, s.stages, who) for s, who in
              [(ctx.student, "student"), *((t, f"teacher {m + 1}") for m, t in enumerate(ctx.teachers))]]
    if any(len(p) != 1 for p in picked):
        raise ValueError(f"{key}={knobs.stage} must pick one stage of each model, picks {[len(p) for p in picked]}")
    s_pos, t_pos = picked[0][0], [p[0] for p in picked[1:]]
    s_channels = list(ctx.student.stages.values())[s_pos][0]
    t_channels = [list(t.stages.values())[j][0] for t, j in zip(ctx.teachers, t_pos)]
    return FT(s_pos, t_pos, s_channels, t_channels, ctx.teacher_weights, knobs.rate)


register_term(TermSpec(
    name="ft",
    reference="Kim et al., NeurIPS 2018; RepDistiller b84f547 distiller_zoo/FT.py",
    build=build,
    knobs=FTKnobs,
    needs=lambda k: feature_needs(parse_stages("stage", k.stage)),
    multi_teacher="per_teacher",
    parts=("paraphraser (pre-stage, then frozen)", "translator"),
    pre_stage="init_epochs",
    paper_defaults=PAPER_DEFAULTS,
))
