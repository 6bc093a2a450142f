"""SEED: self-supervised distillation (Fang et al., ICLR 2021, arXiv 2101.04731), label-free.

The teacher's L2-normalised embeddings go into a FIFO queue of K rows. For each sample the student's
projection s (a head to the teacher's embedding size, then L2 normalisation) and the teacher's
embedding t are scored against [t, queue]: the teacher's own embedding is the first column, as in the
authors' code. The student's distribution softmax([<s, t>, s Q^T] / tau_s) is matched to the teacher's
softmax([<t, t>, t Q^T] / tau_t) by cross-entropy, averaged over the batch; then (training only) the
batch's teacher embeddings are enqueued. The authors' code is jacobswan1/SEED (``seed/builder.py``,
``tools/utils.py:soft_cross_entropy``); ``tests/test_distill_seed.py`` pins our values to it.

With M teachers: one head and one queue per teacher, the M cross-entropies weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_choice, check_count, check_positive, check_weight, normalise_weights
from orchestrator.distill.heads import HEADS, projection_head
from orchestrator.distill.queue import FeatureQueue
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_term

# The authors' defaults (jacobswan1/SEED tools/opts.py at commit f236cac7c7fe41c74237097e5cf0d89a664c7a09:
# --queue 65536, --temp 0.2, --distill-t 1e-4, --student_mlp True); SEED trains with this term alone.
PAPER_DEFAULTS = {
    "distill.seed.queue_size": 65536,
    "distill.seed.student_t": 0.2,
    "distill.seed.teacher_t": 1e-4,
    "distill.seed.head": "mlp",
    "distill.seed.weight": 1.0,
}


@dataclass
class SEEDKnobs:
    """``distill.seed.*``: queue_size K, student_t tau_s, teacher_t tau_t, the student's head, weight.

    head: "mlp" (Linear(Ds, Ds), ReLU, Linear(Ds, Dt), the authors' ``--student_mlp``) or "linear".
    The default queue is shorter than the paper's 65,536 (small datasets); the paper's is a known-good point.
    """

    queue_size: int = 4096  # K: teacher embeddings kept in the queue (the paper's 65,536 is for large datasets)
    student_t: float = 0.2  # tau_s, the student's similarity temperature
    teacher_t: float = 1e-4  # tau_t, the teacher's similarity temperature
    head: str = "mlp"  # the student's head: mlp (Linear, ReLU, Linear, the authors') or linear
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_count("queue_size", self.queue_size)
        check_positive("student_t", self.student_t)
        check_positive("teacher_t", self.teacher_t)
        check_choice("head", self.head, HEADS)
        check_weight("weight", self.weight)


def seed_loss(student: Tensor, teacher: Tensor, queue: Tensor, student_t: float, teacher_t: float) -> Tensor:
    """Cross-entropy between the teacher's and the student's similarity distributions over [teacher, queue].

    Args:
        student: (B, d) unit rows (gradient flows).  teacher: (B, d) unit rows (no gradient).
        queue: (K, d) unit rows (no gradient).  student_t, teacher_t: the temperatures.
    Returns:
        scalar  -(1/B) sum_b sum_j p_t[b, j] log p_s[b, j], computed in float32 (float64 stays float64),
        with p_x = softmax([<x_b, t_b>, x_b Q^T] / tau_x) over K + 1 columns.
    """
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t, q = student.to(dtype), teacher.detach().to(dtype), queue.detach().to(dtype)
    with torch.autocast(device_type=s.device.type, enabled=False):  # / 1e-4 overflows half precision
        logits_s = torch.cat([(s * t).sum(1, keepdim=True), s @ q.t()], dim=1) / student_t
        logits_t = torch.cat([(t * t).sum(1, keepdim=True), t @ q.t()], dim=1) / teacher_t
        return -(F.softmax(logits_t, dim=1) * F.log_softmax(logits_s, dim=1)).sum(1).mean()


class SEEDLoss(nn.Module):
    """SEED against one teacher: the student's head (Ds -> Dt) and the queue of teacher embeddings (K, Dt)."""

    def __init__(self, student_dim: int, teacher_dim: int, queue_size: int = 4096, student_t: float = 0.2,
                 teacher_t: float = 1e-4, head: str = "mlp", seed: int = 0):
        super().__init__()
        self.student_t = check_positive("student_t", student_t)
        self.teacher_t = check_positive("teacher_t", teacher_t)
        self.head = projection_head(student_dim, teacher_dim, head)
        self.queue = FeatureQueue(queue_size, teacher_dim, seed)

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        """student_emb: (B, Ds); teacher_emb: (B, Dt), detached. Enqueues the teacher's rows in training mode."""
        if self.training:
            self.queue.sync()
        s = self.head(student_emb.flatten(1))
        s = F.normalize(s.to(torch.promote_types(s.dtype, torch.float32)), dim=1)  # half -> float32
        t = teacher_emb.detach().flatten(1)
        t = F.normalize(t.to(torch.promote_types(t.dtype, torch.float32)), dim=1)
        # a copy: autograd keeps the queue for the backward pass, and the enqueue below overwrites rows
        loss = seed_loss(s, t, self.queue.rows.clone(), self.student_t, self.teacher_t)
        if self.training:
            self.queue.enqueue(t)
        return loss


class SEED(Term):
    """sum_m w_m SEEDLoss_m over M >= 1 teachers (teacher m's queue seeded from seed + m)."""

    def __init__(self, student_dim: int, teacher_dims: Sequence[int], *, teacher_weights: Sequence[float] | None = None,
                 queue_size: int = 4096, student_t: float = 0.2, teacher_t: float = 1e-4, head: str = "mlp",
                 seed: int = 0):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.losses = nn.ModuleList(
            SEEDLoss(student_dim, dim, queue_size, student_t, teacher_t, head, seed=seed + m)
            for m, dim in enumerate(teacher_dims)
        )

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.losses):
            raise ValueError(f"SEED was built for {len(self.losses)} teacher(s), got {len(batch.teachers)}")
        emb = batch.student.embedding
        return sum(w * loss(emb, t.embedding) for w, loss, t in zip(self.teacher_weights, self.losses, batch.teachers))


def build(ctx: TermContext, knobs: SEEDKnobs) -> SEED:
    return SEED(ctx.student.embedding, [t.embedding for t in ctx.teachers], teacher_weights=ctx.teacher_weights,
                queue_size=knobs.queue_size, student_t=knobs.student_t, teacher_t=knobs.teacher_t, head=knobs.head,
                seed=ctx.seed)


register_term(TermSpec(
    name="seed",
    reference="Fang et al., ICLR 2021; jacobswan1/SEED f236cac",
    build=build,
    knobs=SEEDKnobs,
    needs=Needs(frozenset({EMBEDDING})),  # no labels: SEED distils unlabelled images
    multi_teacher="per_teacher",
    parts=("projection head", "teacher-embedding queue"),
    paper_defaults=PAPER_DEFAULTS,
))
