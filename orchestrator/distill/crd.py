"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

The student and teacher embeddings go through their own heads
(Linear(dim, feat_dim) + L2 normalisation). Each anchor is contrasted against
one memory bank of the *other* network: the student embedding against the
teacher bank and the teacher embedding against the student bank, with the
sample's own row as positive and K negatives. The loss is the sum of both NCE
terms; afterwards (no grad) both banks are updated with the new embeddings.
Under torch.distributed the bank update and Z use the global batch, so every
rank keeps identical banks. With M teachers: one head pair and bank pair per
teacher, the batch's negatives shared, the M terms weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.data.negatives import NegativeSampler
from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_choice, check_count, check_fraction, check_positive, normalise_weights
from orchestrator.distill.distributed import dist_world
from orchestrator.distill.memory import Z_MODES, ContrastMemory
from orchestrator.distill.nce import Workspace, contrast_dots, grad_scale, nce_loss_and_grad, with_gradient
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_preset, register_term

NEGATIVES_MODES = ("exact", "shared")

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, CRD: -a 0 -b 0.8, at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403; train_student.py defaults), as config keys.
PAPER_DEFAULTS = {
    "distill.gamma": 1.0, "distill.beta": 0.8, "distill.crd.nce_t": 0.07, "distill.crd.nce_k": 16384,
    "distill.crd.feat_dim": 128, "distill.crd.momentum": 0.5,
}
# CRD+KD, the best row of the CRD paper's tables (-a 1 -b 0.8).
CRD_KD_PAPER_DEFAULTS = {**PAPER_DEFAULTS, "distill.alpha": 1.0, "distill.kd.temperature": 4.0}


@dataclass
class CRDKnobs:
    """``distill.crd.*``; the weight is ``distill.beta``.

    feat_dim: d, the contrast space.  nce_k: K negatives.  nce_t: tau.  momentum: bank momentum.
    z_mode: "fixed" (first batch, as the reference) or "ema".  negatives_mode: "shared" (one K-set
    per batch, one matmul) or "exact" (K per anchor, the reference).
    """

    feat_dim: int = 128
    nce_k: int = 4096
    nce_t: float = 0.07
    momentum: float = 0.5
    z_mode: str = "fixed"
    negatives_mode: str = "shared"

    def __post_init__(self):
        check_count("feat_dim", self.feat_dim)
        check_count("nce_k", self.nce_k)
        check_positive("nce_t", self.nce_t)
        check_fraction("momentum", self.momentum)
        check_choice("z_mode", self.z_mode, Z_MODES)
        check_choice("negatives_mode", self.negatives_mode, NEGATIVES_MODES)


class Embed(nn.Module):
    """Linear(in_dim, out_dim) then L2 normalisation: (B, in_dim) -> (B, out_dim) unit rows."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


class CRDLoss(nn.Module):
    """The (unweighted) CRD term for one teacher: heads, memory banks and Z.

    Args:
        student_dim, teacher_dim: embedding sizes of student and teacher.
        n_data: N, training-set size (bank rows).
        feat_dim: d, the size of the contrast space.
        nce_t: tau, the NCE temperature.
        momentum: memory-bank momentum in [0, 1).
        z_mode: "fixed" or "ema" (see :class:`ContrastMemory`).
        seed: seeds the bank initialisation.
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
    ):
        super().__init__()
        for name, value in (("student_dim", student_dim), ("teacher_dim", teacher_dim), ("feat_dim", feat_dim)):
            check_count(name, value)
        self.tau = check_positive("nce_t", nce_t)
        self.n_data = int(n_data)
        self.embed_s = Embed(student_dim, feat_dim)
        self.embed_t = Embed(teacher_dim, feat_dim)
        self.memory = ContrastMemory(n_data, feat_dim, momentum, z_mode, z_momentum, seed)
        self._work = (Workspace(), Workspace())  # scratch of the two directions, not state

    def forward(self, student_emb: Tensor, teacher_emb: Tensor, indices: Tensor, negatives: Tensor) -> Tensor:
        """
        Args:
            student_emb: (B, Ds).  teacher_emb: (B, Dt), detached here.
            indices: (B,) dataset indices (positives).
            negatives: (B, K) per-anchor ("exact") or (K,) shared negatives, K < N.
        Returns:
            scalar NCE(student anchors vs teacher bank) + NCE(teacher anchors vs student bank).
            In training mode, Z is set/updated and the banks are updated afterwards.
        """
        if negatives.shape[-1] >= self.n_data:
            raise ValueError(f"nce_k ({negatives.shape[-1]}) must be smaller than N ({self.n_data})")
        mem = self.memory
        if self.training:
            mem.sync_banks()
        v_s = self.embed_s(student_emb).float()  # (B, d)
        v_t = self.embed_t(teacher_emb.detach()).float()  # (B, d)
        idx = indices.to(mem.bank_s.device, torch.long)
        negatives = negatives.to(mem.bank_s.device, torch.long)
        # The value of contrast_scores + nce_loss, with the gradient written out by hand
        # (memory.nce_loss_and_grad): far fewer (B, K+1) temporaries, see docs/BENCHMARKS.md.
        work_s, work_t = self._work
        with torch.autocast(device_type=v_s.device.type, enabled=False):  # exp(<v, m>/tau) needs fp32
            dots_s, back_s = contrast_dots(v_s, mem.bank_t, idx, negatives, work_s)  # (B, K+1)
            dots_t, back_t = contrast_dots(v_t, mem.bank_s, idx, negatives, work_t)  # (B, K+1)
            out_s, out_t = dots_s.div_(self.tau).exp_(), dots_t.div_(self.tau).exp_()  # = contrast_scores
            z_s, z_t = mem.normalisers(out_s, out_t, update=self.training)
            grad_on = torch.is_grad_enabled()
            loss_s, g_s = nce_loss_and_grad(out_s, z_s, self.n_data, grad_on and v_s.requires_grad, work=work_s)
            loss_t, g_t = nce_loss_and_grad(out_t, z_t, self.n_data, grad_on and v_t.requires_grad, work=work_t)
            scale = grad_scale(self.tau, v_s.shape[0])
            grad_s = None if g_s is None else back_s(g_s).mul_(scale)  # before the banks are updated below
            grad_t = None if g_t is None else back_t(g_t).mul_(scale)
            loss = with_gradient(loss_s, v_s, grad_s) + with_gradient(loss_t, v_t, grad_t)
        if self.training:
            mem.update(idx, v_s, v_t)
        return loss


class CRD(Term):
    """The CRD term for M >= 1 teachers: sum_m w_m CRD_m (the plain CRD term when M = 1).

    Owns the :class:`NegativeSampler` (its state travels in the module's extra state, so
    ``load_state_dict`` resumes the same negative stream) and one :class:`CRDLoss` per teacher
    in ``self.crds``; all teachers share the batch's negatives.

    Args:
        student_dim: Ds.  teacher_dims: M teacher embedding sizes.
        train_labels: (N,) labels of the training set (N = bank rows, class negatives).
        teacher_weights: M weights (normalised to sum 1).
        feat_dim, nce_k, nce_t, momentum, z_mode, negatives_mode: as :class:`CRDKnobs`.
        negatives: "class" or "uniform" (see :class:`NegativeSampler`).
        seed: seeds the sampler and the bank initialisation (teacher m's banks: seed + 1 + m).
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
        seed: int = 0,
    ):
        super().__init__()
        check_count("nce_k", nce_k)
        self.negatives_mode = check_choice("negatives_mode", negatives_mode, NEGATIVES_MODES)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.sampler = NegativeSampler(train_labels, nce_k, negatives, seed)
        self.n_data = self.sampler.n
        self.crds = nn.ModuleList(
            CRDLoss(student_dim, dim, self.n_data, feat_dim, nce_t, momentum, z_mode, seed=seed + 1 + m)
            for m, dim in enumerate(teacher_dims)
        )

    def draw_negatives(self, indices: Tensor, labels: Tensor) -> Tensor:
        """(B, K) negatives ("exact") or (K,) ("shared") on the device of ``indices``; one stream per rank."""
        self.sampler.stream = dist_world()[0]
        device = indices.device
        if self.negatives_mode == "shared":
            return self.sampler.sample_shared(device)
        return self.sampler.sample(indices, labels, device)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.crds):
            raise ValueError(f"CRD was built for {len(self.crds)} teacher(s), got {len(batch.teachers)}")
        negatives = self.draw_negatives(batch.indices, batch.labels)
        emb = batch.student.embedding
        if len(self.crds) == 1:
            return self.crds[0](emb, batch.teachers[0].embedding, batch.indices, negatives)
        return sum(w * loss(emb, t.embedding, batch.indices, negatives)
                   for w, loss, t in zip(self.teacher_weights, self.crds, batch.teachers))

    def get_extra_state(self) -> Any:
        return {"sampler": self.sampler.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.sampler.load_state_dict(state["sampler"])


def build(ctx: TermContext, knobs: CRDKnobs) -> CRD:
    return CRD(
        ctx.student.embedding, [t.embedding for t in ctx.teachers], ctx.train_labels,
        teacher_weights=ctx.teacher_weights, feat_dim=knobs.feat_dim, nce_k=knobs.nce_k, nce_t=knobs.nce_t,
        momentum=knobs.momentum, z_mode=knobs.z_mode, negatives_mode=knobs.negatives_mode,
        negatives=ctx.negatives, seed=ctx.seed,
    )


def _fewer_negatives(knobs: CRDKnobs, num_train_samples: int) -> tuple[str, Any, str] | None:
    if knobs.nce_k >= num_train_samples:
        return "distill.crd.nce_k", knobs.nce_k, f"fewer negatives than training samples ({num_train_samples})"
    return None


register_term(TermSpec(
    name="crd",
    reference="Tian et al., ICLR 2020; RepDistiller b84f547 crd/",
    build=build,
    knobs=CRDKnobs,
    weight_key="distill.beta",
    needs=Needs(frozenset({EMBEDDING}), labels=True),  # labels: class negatives (uniform ones need none)
    multi_teacher="per_teacher",
    parts=("embedding heads", "memory banks", "negative sampler"),
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.gamma"},
    data_check=_fewer_negatives,
))
register_preset("crd", ("ce", "crd"), PAPER_DEFAULTS)
register_preset("crd_kd", ("ce", "kd", "crd"), CRD_KD_PAPER_DEFAULTS)
