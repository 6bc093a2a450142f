"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020).

The student and teacher embeddings go through their own heads
(Linear(dim, feat_dim) + L2 normalisation). Each anchor is contrasted against
one memory bank of the *other* network: the student embedding against the
teacher bank and the teacher embedding against the student bank, with the
sample's own row as positive and K negatives. The loss is the sum of both NCE
terms; afterwards (no grad) both banks are updated with the new embeddings.
Under torch.distributed the bank update and Z use the global batch, so every
rank keeps identical banks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.data.negatives import NegativeSampler
from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.distill.ce import check_weight
from orchestrator.distill.kd import as_single_teacher, check_temperature, kd_loss
from orchestrator.distill.memory import (
    ContrastMemory,
    Workspace,
    contrast_dots,
    dist_world,
    grad_scale,
    nce_loss_and_grad,
    with_gradient,
)
from orchestrator.models.base import ModelOutput

NEGATIVES_MODES = ("exact", "shared")

# The paper's settings (CRD: -a 0 -b 0.8; see kd.PAPER_DEFAULTS for the source), as config keys.
PAPER_DEFAULTS = {
    "distill.gamma": 1.0, "distill.beta": 0.8, "distill.crd.nce_t": 0.07, "distill.crd.nce_k": 16384,
    "distill.crd.feat_dim": 128, "distill.crd.momentum": 0.5,
}


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
            if int(value) <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.tau = check_temperature(nce_t, "nce_t")
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


class ContrastiveDistiller(Distiller):
    """Base of the CRD distillers: owns the :class:`NegativeSampler` and its state.

    The sampler state travels in the module's extra state (``state_dict`` key
    ``_extra_state``), so ``load_state_dict`` resumes the same negative stream.
    """

    def _init_negatives(self, train_labels: Tensor, nce_k: int, negatives: str, negatives_mode: str, seed: int):
        if int(nce_k) <= 0:
            raise ValueError(f"nce_k must be > 0, got {nce_k}")
        if negatives_mode not in NEGATIVES_MODES:
            raise ValueError(f"negatives_mode must be one of {list(NEGATIVES_MODES)}, got {negatives_mode!r}")
        self.negatives_mode = negatives_mode
        self.sampler = NegativeSampler(train_labels, nce_k, negatives, seed)
        self.n_data = self.sampler.n

    def draw_negatives(self, indices: Tensor, labels: Tensor) -> Tensor:
        """(B, K) negatives ("exact") or (K,) ("shared") on the device of ``indices``; one stream per rank."""
        self.sampler.stream = dist_world()[0]
        device = indices.device
        if self.negatives_mode == "shared":
            return self.sampler.sample_shared(device)
        return self.sampler.sample(indices, labels, device)

    def get_extra_state(self) -> Any:
        return {"sampler": self.sampler.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.sampler.load_state_dict(state["sampler"])


class CRDDistiller(ContrastiveDistiller):
    """``{"ce": gamma * CE, "crd": beta * CRD}``.

    Args:
        student_dim, teacher_dim: embedding sizes.
        train_labels: (N,) labels of the training set (N = bank rows, class negatives).
        gamma, beta: CE and CRD weights.
        feat_dim, nce_k, nce_t, momentum, z_mode: as ``distill.crd.*``.
        negatives_mode: "exact" (K per anchor) or "shared" (one K-set per batch).
        negatives: "class" or "uniform" (see :class:`NegativeSampler`).
        seed: seeds the sampler and the bank initialisation.
    """

    use_kd = False  # CRDKDDistiller adds the KD term
    alpha: float = 0.0
    temperature: float = 4.0

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        train_labels: Tensor,
        *,
        gamma: float = 1.0,
        beta: float = 0.8,
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
        self.gamma = check_weight("gamma", gamma)
        self.beta = check_weight("beta", beta)
        self._init_negatives(train_labels, nce_k, negatives, negatives_mode, seed)
        self.crd = CRDLoss(
            student_dim, teacher_dim, self.n_data, feat_dim, nce_t, momentum, z_mode, seed=seed + 1
        )

    def forward(
        self, student: ModelOutput, teacher: TeacherOutputs, labels: Tensor, indices: Tensor
    ) -> dict[str, Tensor]:
        t = as_single_teacher(teacher)
        terms = {"ce": self.gamma * F.cross_entropy(student.logits, labels)}
        if self.use_kd:
            terms["kd"] = self.alpha * kd_loss(student.logits, t.logits, self.temperature)
        negatives = self.draw_negatives(indices, labels)
        terms["crd"] = self.beta * self.crd(student.embedding, t.embedding, indices, negatives)
        return terms
