"""Cross-entropy with the labels: the student's own supervised term (``distill.method: ce`` = the student alone)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term
from orchestrator.distill.registry import Needs, TermSpec, register_preset, register_term


class CrossEntropy(Term):
    """CE(student.logits (B, C), labels (B,)), averaged over the batch."""

    def forward(self, batch: Batch) -> Tensor:
        return F.cross_entropy(batch.student.logits, batch.labels)


register_term(TermSpec(
    name="ce",
    reference="cross-entropy with the labels",
    build=lambda ctx, knobs: CrossEntropy(),
    weight_key="distill.gamma",
    needs=Needs(labels=True),
    multi_teacher="outputs",  # reads no teacher: any number is fine
))
register_preset("ce", ("ce",))
