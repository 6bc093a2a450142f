"""Cross-entropy with the labels: the student's own supervised term (``distill.method: ce`` = the student alone)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term
from orchestrator.distill.checks import check_weight
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term


@dataclass
class CEKnobs:
    """``distill.ce.*``: the term's weight."""

    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_weight("weight", self.weight)


class CrossEntropy(Term):
    """CE(student.logits (B, C), labels (B,)), averaged over the batch."""

    def forward(self, batch: Batch) -> Tensor:
        return F.cross_entropy(batch.student.logits, batch.labels)


register_term(TermSpec(
    name="ce",
    reference="cross-entropy with the labels",
    build=lambda ctx, knobs: CrossEntropy(),
    knobs=CEKnobs,
    needs=Needs(labels=True),
    multi_teacher="outputs",  # reads no teacher: any number is fine
))
register_preset("ce", ("ce",))
