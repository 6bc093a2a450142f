"""Attention transfer, AT (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller runs it in the CRD paper.

A stage's attention map is the channel mean of its activations' p-th power, flattened and L2-normalised
per sample. The power is ``|a|^p`` as the AT paper writes it (the default, defined for any p > 0), or, with
``distill.at.signed=true``, RepDistiller's ``a^p`` of the signed activation (integer p). The two agree for even p
and on non-negative maps; for odd p they differ where stage outputs are negative (the WRNs' stage outputs, as in
RepDistiller, are pre-activation sums, and MobileNetV2's after its first stage are linear bottlenecks): at p=1 on a
randomly initialised WRN-40-2 -> WRN-16-2 (stages "1:", 16 N(0, 1) images, seed 0) the loss differs by 99%.
The paper defaults (p=2) are RepDistiller's either way; the term is the mean squared difference between the student's and the
teacher's maps, summed over the paired stages. Maps of different spatial sizes are compared at the
smaller one (the larger is average-pooled), as RepDistiller does; channel counts may differ. No
trainable parts. With M teachers: the M terms weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import KnobError, check_flag, check_positive, check_weight, normalise_weights
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term
from orchestrator.distill.stages import check_selector, pair, pool_to_smaller
from orchestrator.models.base import Shapes

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, AT: --distill attention -a 0 -b 1000;
# distiller_zoo/AT.py p=2 on feat[1:-1] = our stages "1:"; at commit b84f547c5db6a35318d4671d7d5c4de74c822403).
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.at.weight": 1000.0, "distill.at.p": 2.0, "distill.at.stages": "1:"}


@dataclass
class ATKnobs:
    """``distill.at.*``: the stages (a selector, see ``distill/stages.py``), the power p, whether the power is
    of the signed activation (RepDistiller's ``a^p``, integer p) rather than of ``|a|`` (the paper's), the weight."""

    stages: str = "1:"  # the stages whose attention maps are matched: a stage selector (distill/stages.py)
    p: float = 2.0  # the power of the activation in the attention map
    signed: bool = False  # true: the power of the signed activation (RepDistiller's a^p, integer p); false: of |a| (the paper's)
    weight: float = 1000.0  # the term's weight

    def __post_init__(self):
        self.stages = check_selector("stages", self.stages)
        check_positive("p", self.p)
        check_flag("signed", self.signed)
        check_signed_power(self.p, self.signed)
        check_weight("weight", self.weight)


def check_signed_power(p: float, signed: bool) -> None:
    """A signed power needs an integer p (a negative activation to a fractional power is not a real number)."""
    if signed and float(p) != int(p):
        raise KnobError("p", p, "an integer when signed=true (RepDistiller's a^p of the signed activation)")


def attention_map(f: Tensor, p: float, signed: bool = False) -> Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |f|^p (``signed``: f^p), L2-normalised per sample
    (float32 at least)."""
    f = f.float()
    return F.normalize((f if signed else f.abs()).pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0, signed: bool = False) -> Tensor:
    """Mean squared difference of the attention maps of (B, Cs, Hs, Ws) and (B, Ct, Ht, Wt), compared at the
    smaller spatial size; the teacher side gets no gradient."""
    f_s, f_t = pool_to_smaller(f_s, f_t.detach())
    return (attention_map(f_s, p, signed) - attention_map(f_t, p, signed)).pow(2).mean()


class AT(Term):
    """``sum_m w_m sum_(s, t) at_loss(student[s], teacher_m[t])`` over the stage pairs of each teacher."""

    def __init__(self, student: Shapes, teachers: Sequence[Shapes], teacher_weights: Sequence[float] | None = None,
                 stages: str = "1:", p: float = 2.0, signed: bool = False):
        super().__init__()
        self.p = check_positive("p", p)
        check_signed_power(p, signed)
        self.signed = signed
        self.teacher_weights = normalise_weights(teacher_weights, len(teachers))
        self.pairs = [pair(stages, student, t, "distill.at.stages") for t in teachers]

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.pairs):
            raise ValueError(f"AT was built for {len(self.pairs)} teacher(s), got {len(batch.teachers)}")
        s = batch.student.features
        return sum(w * sum(at_loss(s[i], teacher.features[j], self.p, self.signed) for i, j in pairs)
                   for w, pairs, teacher in zip(self.teacher_weights, self.pairs, batch.teachers))


def build(ctx: TermContext, knobs: ATKnobs) -> AT:
    return AT(ctx.student, ctx.teachers, ctx.teacher_weights, knobs.stages, knobs.p, knobs.signed)


register_term(TermSpec(
    name="at",
    reference="Zagoruyko & Komodakis, ICLR 2017; RepDistiller b84f547 distiller_zoo/AT.py",
    build=build,
    knobs=ATKnobs,
    needs=lambda knobs: Needs(stages=(knobs.stages,)),
    multi_teacher="per_teacher",
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("at", ("ce", "at"), PAPER_DEFAULTS)
