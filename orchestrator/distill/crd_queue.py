"""CRD at any dataset size: CRD's NCE with a MoCo-style queue of negatives instead of memory banks.

RepDistiller's maintainers answer the request for CRD on ImageNet-21k-scale data with "use a MoCo-style
queue" (HobbitLong/RepDistiller issue 40). CRD (``crd.py``) keeps two (N, d) banks; this term keeps the
last K student and teacher projections in two FIFO queues (:class:`FeatureQueue`), O(K d) memory.

Each anchor is contrasted against the *other* network, as in CRD: the student projection v_s against the
teacher's current projection of the same sample (positive, a constant key) and the teacher queue (K
negatives); the teacher projection v_t against the student's current projection and the student queue.
The loss is CRD's NCE (``nce.nce_loss``, noise 1/N, Z from the first batch or an EMA) on these K + 1
scores, so with a queue holding the same rows as CRD's shared negatives and a bank holding the current
keys at the batch's rows it is CRD's value. Afterwards (training only) both batches of keys are enqueued.
The negatives are uniform, whatever ``data.negatives`` says (a queue has no class structure), and the
term needs no labels. With M teachers: one head pair and queue pair per teacher, weighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_choice, check_count, check_positive, check_weight, normalise_weights
from orchestrator.distill.crd import PAPER_DEFAULTS as CRD_PAPER_DEFAULTS
from orchestrator.distill.crd import Embed
from orchestrator.distill.memory import Z_MODES, NCENormalisers
from orchestrator.distill.nce import Workspace, grad_scale, nce_loss_and_grad, with_gradient
from orchestrator.distill.queue import FeatureQueue
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_term

# CRD's paper settings (see crd.py), with the queue as long as CRD's negatives (K = 16384).
PAPER_DEFAULTS = {
    "distill.crd_queue.weight": CRD_PAPER_DEFAULTS["distill.beta"],
    "distill.crd_queue.queue_size": CRD_PAPER_DEFAULTS["distill.crd.nce_k"],
    "distill.crd_queue.nce_t": CRD_PAPER_DEFAULTS["distill.crd.nce_t"],
    "distill.crd_queue.feat_dim": CRD_PAPER_DEFAULTS["distill.crd.feat_dim"],
}


@dataclass
class CRDQueueKnobs:
    """``distill.crd_queue.*``: queue_size K (negatives), feat_dim d, nce_t tau, z_mode ("fixed"/"ema"), weight."""

    queue_size: int = 4096
    feat_dim: int = 128
    nce_t: float = 0.07
    z_mode: str = "fixed"
    weight: float = 0.8

    def __post_init__(self):
        check_count("queue_size", self.queue_size)
        check_count("feat_dim", self.feat_dim)
        check_positive("nce_t", self.nce_t)
        check_choice("z_mode", self.z_mode, Z_MODES)
        check_weight("weight", self.weight)


@torch.no_grad()
def queue_dots(anchor: Tensor, keys: Tensor, queue: Tensor, work: Workspace | None = None):
    """Dot products of each anchor with its positive key and with every queue row.

    Args:
        anchor: (B, d), used detached.  keys: (B, d) positives (row b for anchor b).  queue: (K, d) negatives.
        work: keeps the (K + 1, B) result from step to step.
    Returns:
        dots: (B, K + 1), positive in column 0 (a transposed view, as ``nce.contrast_dots`` in shared mode).
        back: g (B, K + 1) -> (B, d) = g[:, 0] keys + g[:, 1:] queue; call it before the queue changes.
    """
    anchor = anchor.detach()
    k, b = queue.shape[0], anchor.shape[0]
    dots_t = (work or Workspace()).get("dots", (k + 1, b), anchor)
    torch.mm(queue, anchor.t(), out=dots_t[1:])
    torch.sum(keys * anchor, dim=1, out=dots_t[0])
    return dots_t.t(), lambda g: torch.addmm(g[:, :1] * keys, g[:, 1:], queue)


class CRDQueueLoss(nn.Module):
    """The (unweighted) queue-mode CRD term for one teacher: heads, two queues, Z.

    Args:
        student_dim, teacher_dim: embedding sizes.  n_data: N (the NCE noise 1/N; no buffer has N rows).
        queue_size: K.  feat_dim: d.  nce_t: tau.  z_mode, z_momentum: see :class:`NCENormalisers`.
        seed: seeds the queues' initial rows (student queue: seed, teacher queue: seed + 1).
    """

    def __init__(self, student_dim: int, teacher_dim: int, n_data: int, queue_size: int = 4096,
                 feat_dim: int = 128, nce_t: float = 0.07, z_mode: str = "fixed", z_momentum: float = 0.99,
                 seed: int = 0):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("feat_dim", feat_dim)):
            check_count(name, value)
        self.tau = check_positive("nce_t", nce_t)
        self.embed_s = Embed(student_dim, feat_dim)
        self.embed_t = Embed(teacher_dim, feat_dim)
        self.z = NCENormalisers(n_data, z_mode, z_momentum)
        self.queue_s = FeatureQueue(queue_size, feat_dim, seed)
        self.queue_t = FeatureQueue(queue_size, feat_dim, seed + 1)
        self._work = (Workspace(), Workspace())

    def forward(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        """
        Args:
            student_emb: (B, Ds).  teacher_emb: (B, Dt), detached here.
        Returns:
            scalar NCE(student anchors vs teacher keys + queue) + NCE(teacher anchors vs student keys + queue).
            In training mode Z is set/updated and both queues take the batch's projections afterwards.
        """
        if self.training:
            self.queue_s.sync()
            self.queue_t.sync()
        v_s = self.embed_s(student_emb).float()  # (B, d)
        v_t = self.embed_t(teacher_emb.detach()).float()  # (B, d)
        q_s, q_t = self.queue_s.rows, self.queue_t.rows
        work_s, work_t = self._work
        with torch.autocast(device_type=v_s.device.type, enabled=False):  # exp(<v, k>/tau) needs fp32
            dots_s, back_s = queue_dots(v_s, v_t.detach(), q_t, work_s)  # (B, K+1)
            dots_t, back_t = queue_dots(v_t, v_s.detach(), q_s, work_t)
            out_s, out_t = dots_s.div_(self.tau).exp_(), dots_t.div_(self.tau).exp_()
            z_s, z_t = self.z.normalisers(out_s, out_t, update=self.training)
            grad_on = torch.is_grad_enabled()
            n = self.z.n_data
            loss_s, g_s = nce_loss_and_grad(out_s, z_s, n, grad_on and v_s.requires_grad, work=work_s)
            loss_t, g_t = nce_loss_and_grad(out_t, z_t, n, grad_on and v_t.requires_grad, work=work_t)
            scale = grad_scale(self.tau, v_s.shape[0])
            grad_s = None if g_s is None else back_s(g_s).mul_(scale)  # before the queues change below
            grad_t = None if g_t is None else back_t(g_t).mul_(scale)
            loss = with_gradient(loss_s, v_s, grad_s) + with_gradient(loss_t, v_t, grad_t)
        if self.training:
            self.queue_s.enqueue(v_s)
            self.queue_t.enqueue(v_t)
        return loss


class CRDQueue(Term):
    """sum_m w_m CRDQueueLoss_m over M >= 1 teachers (teacher m's queues seeded from seed + 2m)."""

    def __init__(self, student_dim: int, teacher_dims: Sequence[int], n_data: int, *,
                 teacher_weights: Sequence[float] | None = None, queue_size: int = 4096, feat_dim: int = 128,
                 nce_t: float = 0.07, z_mode: str = "fixed", seed: int = 0):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.crds = nn.ModuleList(
            CRDQueueLoss(student_dim, dim, n_data, queue_size, feat_dim, nce_t, z_mode, seed=seed + 2 * m)
            for m, dim in enumerate(teacher_dims)
        )

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.crds):
            raise ValueError(f"crd_queue was built for {len(self.crds)} teacher(s), got {len(batch.teachers)}")
        emb = batch.student.embedding
        return sum(w * loss(emb, t.embedding) for w, loss, t in zip(self.teacher_weights, self.crds, batch.teachers))


def build(ctx: TermContext, knobs: CRDQueueKnobs) -> CRDQueue:
    return CRDQueue(
        ctx.student.embedding, [t.embedding for t in ctx.teachers], max(int(ctx.train_labels.numel()), 1),
        teacher_weights=ctx.teacher_weights, queue_size=knobs.queue_size, feat_dim=knobs.feat_dim,
        nce_t=knobs.nce_t, z_mode=knobs.z_mode, seed=ctx.seed,
    )


register_term(TermSpec(
    name="crd_queue",
    reference="CRD with a MoCo-style queue (RepDistiller issue 40); values equal CRD's (RepDistiller b84f547) on the bank's rows",
    build=build,
    knobs=CRDQueueKnobs,
    needs=Needs(frozenset({EMBEDDING})),
    multi_teacher="per_teacher",
    parts=("embedding heads", "feature queues"),
    paper_defaults=PAPER_DEFAULTS,
))
