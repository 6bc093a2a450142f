"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020), with a memory bank or a queue.

The student and teacher embeddings go through their own heads (Linear(dim, feat_dim) + L2 normalisation).
Each anchor is contrasted against the *other* network's memory: the student projection against the
teacher's and the teacher projection against the student's, with one positive and K negatives. The loss is
the sum of both NCE terms (``nce.py``); afterwards (training, no grad) both memories take the batch.

``distill.crd.memory`` chooses the memory (``memory.py``):

- ``bank`` (the paper): two (N, d) banks; the positive is the sample's own row (``positive: exact``) or,
  as the reference's ``relax`` mode, the row of a random training sample of its class (``relax``); the
  negatives are K rows per anchor (``negatives_mode: exact``, the reference; of other classes with
  ``negatives: class``, as its ``CIFAR100InstanceSample``, or of any sample with ``uniform``) or one set
  of K uniform rows for the whole batch (``shared``: one matmul);
- ``queue``: the last Q = ``queue_size`` projections of each network, MoCo-style (RepDistiller's answer to
  ImageNet-21k-scale data, its issue 40), O(Q d) at any dataset size; the positive is the other network's
  current projection of the same image, the negatives K queue rows shared by the batch (all of them when
  Q = K). With a queue holding the bank's rows the value and gradient are the bank's.
  The queue's keys (the rows it takes, and the positives) come from momentum copies of the two heads,
  MoCo's key encoder (``key_momentum`` m: k <- m k + (1 - m) q every training step; 0: the online heads).
  Without them the keys of a fast-moving head disagree with each other and CRD with a queue lost 8 points
  on Fashion-MNIST; with them it is within noise of the bank (docs/RESULTS.md, section 10).

Label use: class negatives (per anchor) and relaxed positives read labels, so with
``data.labeled_fraction < 1`` such a CRD sees the labelled rows only; with shared or uniform negatives and
exact positives (the queue always) it reads none and sees every image.
Under torch.distributed the memory updates and Z use the global batch, so every rank keeps identical
memories. With M teachers: one head pair and memory pair per teacher, the batch's draws shared, the M
terms weighted by the teacher weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.data.negatives import NegativeSampler
from orchestrator.data.split import UNLABELLED
from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import (
    KnobError, check_choice, check_count, check_fraction, check_positive, check_weight, normalise_weights,
)
from orchestrator.distill.distributed import dist_world
from orchestrator.distill.memory import Z_MODES, ContrastMemory, QueueMemory
from orchestrator.distill.nce import Workspace, contrast_dots, grad_scale, nce_loss_and_grad, with_gradient
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_preset, register_term

NEGATIVES_MODES = ("exact", "shared")
MEMORIES = ("bank", "queue")
NEGATIVES = ("class", "uniform")
POSITIVES = ("exact", "relax")

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, CRD: -a 0 -b 0.8, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403; train_student.py defaults: --nce_k 16384, --mode exact, i.e.
# CIFAR100InstanceSample's own-row positive and other-class negatives), as config keys.
PAPER_DEFAULTS = {
    "distill.ce.weight": 1.0, "distill.crd.weight": 0.8, "distill.crd.nce_t": 0.07, "distill.crd.nce_k": 16384,
    "distill.crd.feat_dim": 128, "distill.crd.momentum": 0.5,
}
# CRD+KD, the best row of the CRD paper's tables (-a 1 -b 0.8).
CRD_KD_PAPER_DEFAULTS = {**PAPER_DEFAULTS, "distill.kd.weight": 1.0, "distill.kd.temperature": 4.0}


@dataclass
class CRDKnobs:
    """``distill.crd.*``: the contrast space, negatives, memory and the term's weight.

    feat_dim: d, the contrast space.  nce_k: K negatives.  nce_t: tau.  momentum: bank momentum.
    z_mode: "fixed" (first batch, as the reference) or "ema".  negatives_mode: "shared" (one K-set
    per batch, uniform, one matmul) or "exact" (K per anchor, the reference; bank only).
    negatives: "class" (other classes, the reference) or "uniform": how exact negatives are drawn.
    positive: "exact" (the sample's own row) or "relax" (a random sample of its class; bank only).
    memory: "bank" (two (N, d) banks) or "queue" (two queues of the last queue_size projections).
    queue_size: Q >= nce_k (None: Q = nce_k, every queue row a negative); K of the Q rows are drawn per batch.
    key_momentum: queue only: momentum m of the key heads (MoCo); 0 = keys from the online heads.
    """

    feat_dim: int = 128  # d, the size of the contrast space (the embedding heads' output)
    nce_k: int = 4096  # K, negatives per anchor in the NCE loss
    nce_t: float = 0.07  # tau, the NCE temperature
    momentum: float = 0.5  # bank memory: momentum of the memory-bank updates
    z_mode: str = "fixed"  # NCE normaliser: fixed (from the first batch, as the reference) or ema
    negatives_mode: str = "shared"  # shared (one K-set per batch, one matmul) or exact (K per anchor, the reference; bank only)
    negatives: str = "class"  # how exact negatives are drawn: class (other classes, the reference) or uniform
    positive: str = "exact"  # exact (the sample's own row) or relax (a random sample of its class; bank only)
    memory: str = "bank"  # bank (two (N, d) banks) or queue (two queues of the last queue_size projections)
    queue_size: int | None = None  # queue memory: Q >= nce_k rows; None = nce_k (every row a negative); K of the Q drawn per batch
    key_momentum: float = 0.99  # queue memory: momentum of the key heads (MoCo); 0 = keys from the online heads
    weight: float = 0.8  # the term's weight

    def __post_init__(self):
        check_count("feat_dim", self.feat_dim)
        check_count("nce_k", self.nce_k)
        check_positive("nce_t", self.nce_t)
        check_fraction("momentum", self.momentum)
        check_choice("z_mode", self.z_mode, Z_MODES)
        check_choice("negatives_mode", self.negatives_mode, NEGATIVES_MODES)
        check_choice("negatives", self.negatives, NEGATIVES)
        check_choice("positive", self.positive, POSITIVES)
        check_choice("memory", self.memory, MEMORIES)
        check_fraction("key_momentum", self.key_momentum)
        check_weight("weight", self.weight)
        check_memory(self.memory, self.nce_k, self.queue_size, self.negatives_mode, self.positive)

    @property
    def reads_labels(self) -> bool:
        """Class negatives (drawn per anchor) or same-class positives need the batch's labels."""
        return (self.negatives_mode == "exact" and self.negatives == "class") or self.positive == "relax"


def check_memory(memory: str, nce_k: int, queue_size: int | None, negatives_mode: str, positive: str) -> None:
    """The settings a queue allows: Q >= K, negatives shared by the batch, the sample's own positive."""
    if memory != "queue":
        return
    if queue_size is not None:
        check_count("queue_size", queue_size)
        if queue_size < nce_k:
            raise KnobError("queue_size", queue_size,
                            f"an integer >= nce_k ({nce_k}): K negatives are drawn from the queue")
    if negatives_mode != "shared":
        raise KnobError("negatives_mode", negatives_mode,
                        "'shared' with memory 'queue' (its rows are shared by the batch; 'exact' needs the bank)")
    if positive != "exact":
        raise KnobError("positive", positive,
                        "'exact' with memory 'queue' (it cannot look up a same-class sample; 'relax' needs the bank)")


class Embed(nn.Module):
    """Linear(in_dim, out_dim) then L2 normalisation: (B, in_dim) -> (B, out_dim) unit rows."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


class CRDLoss(nn.Module):
    """The (unweighted) CRD term for one teacher: heads, memory (banks or queues) and Z.

    Args:
        student_dim, teacher_dim: embedding sizes of student and teacher.
        n_data: N, training-set size (bank rows; the NCE noise 1/N).
        feat_dim: d, the size of the contrast space.
        nce_t: tau, the NCE temperature.
        momentum: memory-bank momentum in [0, 1).
        z_mode: "fixed" or "ema" (see :class:`~orchestrator.distill.memory.NCENormalisers`).
        seed: seeds the memory's initial rows.
        queue_size: None: memory banks (N rows); Q: queues of the last Q projections instead.
        key_momentum: with a queue and m > 0, the keys (queued rows, positives) come from momentum copies of
            the heads (``key_s``, ``key_t``; no gradient); 0: from the online heads.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        n_data: int,
        feat_dim: int = 128,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        z_mode: str = "fixed",
        z_momentum: float = 0.99,
        seed: int = 0,
        queue_size: int | None = None,
        key_momentum: float = 0.0,
    ):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("feat_dim", feat_dim)):
            check_count(name, value)
        self.tau = check_positive("nce_t", nce_t)
        self.n_data = int(n_data)
        self.embed_s = Embed(student_dim, feat_dim)
        self.embed_t = Embed(teacher_dim, feat_dim)
        if queue_size is None:
            self.memory = ContrastMemory(n_data, feat_dim, momentum, z_mode, z_momentum, seed)
        else:
            self.memory = QueueMemory(n_data, queue_size, feat_dim, z_mode, z_momentum, seed)
        self._work = (Workspace(), Workspace())  # scratch of the two directions, not state
        self.key_momentum = check_fraction("key_momentum", key_momentum) if queue_size is not None else 0.0
        if self.key_momentum > 0:
            self.key_s, self.key_t = copy.deepcopy(self.embed_s), copy.deepcopy(self.embed_t)
            for param in (*self.key_s.parameters(), *self.key_t.parameters()):
                param.requires_grad_(False)
        self._keys_synced = False

    @torch.no_grad()
    def _update_keys(self) -> None:
        """Key heads <- m * key heads + (1 - m) * online heads (broadcast from rank 0 once first)."""
        pairs = list(zip((*self.key_s.parameters(), *self.key_t.parameters()),
                         (*self.embed_s.parameters(), *self.embed_t.parameters())))
        if not self._keys_synced and dist_world()[1] > 1:
            for key, _ in pairs:
                dist.broadcast(key, src=0)
        self._keys_synced = True
        for key, online in pairs:
            key.mul_(self.key_momentum).add_(online.detach(), alpha=1 - self.key_momentum)

    def keys(self, student_emb: Tensor, teacher_emb: Tensor, v_s: Tensor, v_t: Tensor) -> tuple[Tensor, Tensor]:
        """The keys (B, d) of the batch, detached: from the key heads (updated first in training), else v_s, v_t."""
        if self.key_momentum == 0:
            return v_s.detach(), v_t.detach()
        if self.training:
            self._update_keys()
        with torch.no_grad():
            return self.key_s(student_emb.detach()).float(), self.key_t(teacher_emb.detach()).float()

    def forward(self, student_emb: Tensor, teacher_emb: Tensor, indices: Tensor, negatives: Tensor | None,
                positives: Tensor | None = None) -> Tensor:
        """
        Args:
            student_emb: (B, Ds).  teacher_emb: (B, Dt), detached here.
            indices: (B,) dataset indices (the bank rows updated; the positives unless ``positives``).
            negatives: rows of the memory: (B, K) per anchor ("exact", bank), (K,) shared, or None
                (every queue row).  positives: (B,) bank rows of the positives ("relax"), bank only.
        Returns:
            scalar NCE(student anchors vs teacher memory) + NCE(teacher anchors vs student memory).
            In training mode, Z is set/updated and the memories are updated afterwards.
        """
        mem = self.memory
        bank = isinstance(mem, ContrastMemory)
        if bank and negatives is not None and negatives.shape[-1] >= self.n_data:
            raise ValueError(f"nce_k ({negatives.shape[-1]}) must be smaller than N ({self.n_data})")
        if self.training:
            mem.sync()
        v_s = self.embed_s(student_emb).float()  # (B, d)
        v_t = self.embed_t(teacher_emb.detach()).float()  # (B, d)
        device = mem.pool_s.device
        idx = indices.to(device, torch.long)
        rows = idx if positives is None else positives.to(device, torch.long)
        negatives = None if negatives is None else negatives.to(device, torch.long)
        k_s, k_t = self.keys(student_emb, teacher_emb, v_s, v_t)
        pos_s, pos_t = mem.positives(rows, k_s, k_t)  # positives of the student / teacher anchors
        # The value of contrast_scores + nce_loss, with the gradient written out by hand
        # (nce.nce_loss_and_grad): far fewer (B, K+1) temporaries, see docs/BENCHMARKS.md.
        work_s, work_t = self._work
        with torch.autocast(device_type=v_s.device.type, enabled=False):  # exp(<v, m>/tau) needs fp32
            dots_s, back_s = contrast_dots(v_s, mem.pool_t, pos_s, negatives, work_s)  # (B, K+1)
            dots_t, back_t = contrast_dots(v_t, mem.pool_s, pos_t, negatives, work_t)  # (B, K+1)
            out_s, out_t = dots_s.div_(self.tau).exp_(), dots_t.div_(self.tau).exp_()  # = contrast_scores
            z_s, z_t = mem.normalisers(out_s, out_t, update=self.training)
            grad_on = torch.is_grad_enabled()
            loss_s, g_s = nce_loss_and_grad(out_s, z_s, self.n_data, grad_on and v_s.requires_grad, work=work_s)
            loss_t, g_t = nce_loss_and_grad(out_t, z_t, self.n_data, grad_on and v_t.requires_grad, work=work_t)
            scale = grad_scale(self.tau, v_s.shape[0])
            grad_s = None if g_s is None else back_s(g_s).mul_(scale)  # before the memories are updated below
            grad_t = None if g_t is None else back_t(g_t).mul_(scale)
            loss = with_gradient(loss_s, v_s, grad_s) + with_gradient(loss_t, v_t, grad_t)
        if self.training:
            mem.update(idx, *((v_s, v_t) if bank else (k_s, k_t)))
        return loss


class CRD(Term):
    """The CRD term for M >= 1 teachers: sum_m w_m CRD_m (the plain CRD term when M = 1).

    Owns the :class:`NegativeSampler` (its state travels in the module's extra state, so
    ``load_state_dict`` resumes the same stream) and one :class:`CRDLoss` per teacher in ``self.crds``;
    all teachers share the batch's draws. With a bank the sampler draws dataset rows (and relaxed
    positives); with a queue longer than K it draws K queue rows per batch; a queue of K rows needs none.

    Args:
        student_dim: Ds.  teacher_dims: M teacher embedding sizes.
        train_labels: (N,) labels of the training set (N = bank rows, class negatives), UNLABELLED where hidden.
        teacher_weights: M weights (normalised to sum 1).
        feat_dim, nce_k, nce_t, momentum, z_mode, negatives_mode, negatives, positive, memory, queue_size,
        key_momentum: as :class:`CRDKnobs` (``key_momentum`` defaults to 0 here, 0.99 in the config).
        seed: seeds the sampler and the memories (teacher m's banks: seed + 1 + m; its queues: seed + 2m
            and seed + 2m + 1).
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dims: Sequence[int],
        train_labels: Tensor,
        *,
        teacher_weights: Sequence[float] | None = None,
        feat_dim: int = 128,
        nce_k: int = 4096,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        z_mode: str = "fixed",
        negatives_mode: str = "exact",
        negatives: str = "class",
        positive: str = "exact",
        memory: str = "bank",
        queue_size: int | None = None,
        key_momentum: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        check_count("nce_k", nce_k)
        self.negatives_mode = check_choice("negatives_mode", negatives_mode, NEGATIVES_MODES)
        self.positive = check_choice("positive", positive, POSITIVES)
        self.memory = check_choice("memory", memory, MEMORIES)
        check_memory(memory, nce_k, queue_size, negatives_mode, positive)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.n_data = max(int(train_labels.numel()), 1)
        queue = None
        if memory == "bank":
            self.sampler = NegativeSampler(train_labels, nce_k, negatives, seed, same_class=positive == "relax")
        else:
            queue = nce_k if queue_size is None else int(queue_size)
            # K of the queue's Q rows, uniform (no labels: a queue's rows have no class); all of them if Q = K
            pool = torch.full((queue,), UNLABELLED)
            self.sampler = NegativeSampler(pool, nce_k, "uniform", seed) if queue > nce_k else None
        self.crds = nn.ModuleList(
            CRDLoss(student_dim, dim, self.n_data, feat_dim, nce_t, momentum, z_mode,
                    seed=seed + 1 + m if queue is None else seed + 2 * m, queue_size=queue,
                    key_momentum=key_momentum)
            for m, dim in enumerate(teacher_dims)
        )

    def draw_negatives(self, indices: Tensor, labels: Tensor) -> Tensor | None:
        """(B, K) negatives ("exact") or (K,) ("shared") on the device of ``indices``, or None (every queue row);
        one stream per rank."""
        if self.sampler is None:
            return None
        self.sampler.stream = dist_world()[0]
        device = indices.device
        if self.negatives_mode == "shared":
            return self.sampler.sample_shared(device)
        return self.sampler.sample(indices, labels, device)

    def draw_positives(self, labels: Tensor, device: torch.device) -> Tensor | None:
        """(B,) same-class bank rows ("relax"), or None (each sample's own row)."""
        if self.positive == "exact":
            return None
        return self.sampler.sample_positives(labels, device)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.crds):
            raise ValueError(f"CRD was built for {len(self.crds)} teacher(s), got {len(batch.teachers)}")
        negatives = self.draw_negatives(batch.indices, batch.labels)
        positives = self.draw_positives(batch.labels, batch.indices.device)
        emb = batch.student.embedding
        if len(self.crds) == 1:
            return self.crds[0](emb, batch.teachers[0].embedding, batch.indices, negatives, positives)
        return sum(w * loss(emb, t.embedding, batch.indices, negatives, positives)
                   for w, loss, t in zip(self.teacher_weights, self.crds, batch.teachers))

    def get_extra_state(self) -> Any:
        return {"sampler": None if self.sampler is None else self.sampler.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])


def build(ctx: TermContext, knobs: CRDKnobs) -> CRD:
    return CRD(
        ctx.student.embedding, [t.embedding for t in ctx.teachers], ctx.train_labels,
        teacher_weights=ctx.teacher_weights, feat_dim=knobs.feat_dim, nce_k=knobs.nce_k, nce_t=knobs.nce_t,
        momentum=knobs.momentum, z_mode=knobs.z_mode, negatives_mode=knobs.negatives_mode,
        negatives=knobs.negatives, positive=knobs.positive, memory=knobs.memory, queue_size=knobs.queue_size,
        key_momentum=knobs.key_momentum, seed=ctx.seed,
    )


def _fewer_negatives(knobs: CRDKnobs, num_train_samples: int) -> tuple[str, Any, str] | None:
    if knobs.memory == "bank" and knobs.nce_k >= num_train_samples:
        return "distill.crd.nce_k", knobs.nce_k, f"fewer negatives than training samples ({num_train_samples})"
    return None


register_term(TermSpec(
    name="crd",
    reference="Tian et al., ICLR 2020; RepDistiller b84f547 crd/, dataset/cifar100.py (exact/relax); "
              "queue: MoCo-style (github.com/HobbitLong/RepDistiller/issues/40), values equal the bank's on the bank's rows",
    build=build,
    knobs=CRDKnobs,
    needs=lambda knobs: Needs(frozenset({EMBEDDING}), labels=knobs.reads_labels),
    multi_teacher="per_teacher",
    parts=("embedding heads", "memory banks or queues", "negative sampler"),
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
    data_check=_fewer_negatives,
))
register_preset("crd", ("ce", "crd"), PAPER_DEFAULTS)
register_preset("crd_kd", ("ce", "kd", "crd"), CRD_KD_PAPER_DEFAULTS)
