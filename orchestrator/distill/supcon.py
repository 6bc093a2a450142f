"""Supervised contrastive learning, SupCon (Khosla et al., NeurIPS 2020, arXiv 2004.11362), as a student term.

The student's embedding goes through a projection head and L2 normalisation. Every sample of the batch
is an anchor; its positives are the other samples with its label, its contrast set every other sample:

    L = (tau / tau_base) * mean_i [ -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) ) ]

(the paper's L^sup_out). An anchor without a positive in the batch contributes 0 and still counts in the
mean, as in the authors' code (HobbitLong/SupContrast ``losses.py``, ``SupConLoss`` with
``contrast_mode='all'``); ``tests/test_distill_supcon.py`` pins our values to it, with one and two views.

Views: the term asks for two views of each image (``Needs.student_views=2``). With ``data.augment``, the
Learner runs the student on a second augmentation of the batch's images (view 1 of the deterministic view
stream, ``orchestrator/data/views.py``; both views in one forward, as the authors' ``main_supcon.py``) and the
term contrasts the 2B vectors: an anchor's positives are its image's other view and both views of the
same-label samples, the paper's setting. Without augmentation there is no second view to draw (a copy of the
same image would only add a trivial positive): the term contrasts the batch's one view, positives are the
same-label samples. ``--dry-run`` says which (``describe``). It reads no teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_choice, check_count, check_positive, check_weight
from orchestrator.distill.heads import HEADS, projection_head
from orchestrator.distill.registry import Needs, TermSpec, register_term

# The paper's temperature 0.1 (its CIFAR/ImageNet runs, and the SupCon commands of the README of
# HobbitLong/SupContrast at commit 66a8fe53880d6a1084b2e4e0db0a019024d6d41a); base temperature 0.07, a
# 128-d output and the "mlp" head are that code's defaults (losses.py, networks/resnet_big.py). SupCon
# trains alone there (then a linear classifier), so the weight of this auxiliary term has no paper value.
PAPER_DEFAULTS = {
    "distill.supcon.temperature": 0.1,
    "distill.supcon.base_temperature": 0.07,
    "distill.supcon.feat_dim": 128,
    "distill.supcon.head": "mlp",
}


@dataclass
class SupConKnobs:
    """``distill.supcon.*``: temperature tau, base_temperature (the loss is scaled by tau / base), feat_dim,
    head ("mlp" or "linear"), weight."""

    temperature: float = 0.1  # tau of the contrastive softmax
    base_temperature: float = 0.07  # the loss is scaled by tau / base_temperature
    feat_dim: int = 128  # the projection head's output size
    head: str = "mlp"  # the projection head: mlp or linear
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_positive("temperature", self.temperature)
        check_positive("base_temperature", self.base_temperature)
        check_count("feat_dim", self.feat_dim)
        check_choice("head", self.head, HEADS)
        check_weight("weight", self.weight)


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1, base_temperature: float = 0.07) -> Tensor:
    """SupCon over every view of every sample.

    Args:
        features: (B, V, d) unit vectors, V views per sample (computed in float32 at least).
        labels: (B,) class indices; samples with equal labels (and a sample's other views) are positives.
    Returns:
        scalar: (tau / tau_base) times the mean over the B * V anchors of minus the mean log-probability of
        their positives among the other B * V - 1 vectors (0 for an anchor without positives).
    """
    if features.dim() != 3 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be (B, V, d) and labels (B,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    b, v = features.shape[:2]
    z = features.transpose(0, 1).reshape(b * v, -1)  # view-major, as the reference
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    y = labels.repeat(v)
    not_self = ~torch.eye(b * v, dtype=torch.bool, device=z.device)
    positives = (y[:, None] == y[None, :]) & not_self
    with torch.autocast(device_type=z.device.type, enabled=False):
        logits = (z @ z.t()) / temperature
        log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    counts = positives.sum(1).clamp(min=1)
    mean_log_prob_pos = (log_prob * positives).sum(1) / counts
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


class SupCon(Term):
    """``supcon_loss`` of the student's projected, normalised embeddings of every view it gets (the batch's,
    plus ``batch.student_views`` with augmentation) with the batch's labels."""

    def __init__(self, student_dim: int, feat_dim: int = 128, head: str = "mlp", temperature: float = 0.1,
                 base_temperature: float = 0.07):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive("base_temperature", base_temperature)
        self.head = projection_head(student_dim, feat_dim, head)

    def forward(self, batch: Batch) -> Tensor:
        outs = (batch.student, *batch.student_views)
        h = self.head(torch.cat([o.embedding.flatten(1) for o in outs]))  # (V * B, d): one head call
        z = F.normalize(h.to(torch.promote_types(h.dtype, torch.float32)), dim=1)  # half -> float32
        z = z.reshape(len(outs), -1, z.shape[1]).transpose(0, 1)  # (B, V, d)
        return supcon_loss(z, batch.labels, self.temperature, self.base_temperature)


def build(ctx: TermContext, knobs: SupConKnobs) -> SupCon:
    return SupCon(ctx.student.embedding, knobs.feat_dim, knobs.head, knobs.temperature, knobs.base_temperature)


register_term(TermSpec(
    name="supcon",
    reference="Khosla et al., NeurIPS 2020; HobbitLong/SupContrast 66a8fe5 losses.py",
    build=build,
    knobs=SupConKnobs,
    needs=Needs(labels=True, student_views=2),  # no teacher; two augmented views of each image (the paper's)
    parts=("projection head",),
    paper_defaults=PAPER_DEFAULTS,
))
