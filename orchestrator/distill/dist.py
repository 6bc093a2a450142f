"""DIST (Huang et al., NeurIPS 2022, arXiv 2205.10536): distil relations, not values.

With P_s = softmax(s / T) and P_t = softmax(t / T) (B, C), DIST matches

- the inter-class relation: each sample's prediction over the classes, ``1 - mean_i rho(P_s[i, :], P_t[i, :])``;
- the intra-class relation: each class's score over the batch, ``1 - mean_c rho(P_s[:, c], P_t[:, c])``;

with rho the Pearson correlation, as ``T^2 * (beta * inter + gamma * intra)``. Being invariant to shifts
and scales of the predictions, it lets a student follow a much stronger teacher without matching its
confidence exactly. With M teachers it reads their weighted mean prediction (like KD). The authors'
code is hunto/DIST_KD (its ``classification`` submodule, hunto/image_classification_sota,
``lib/models/losses/dist_kd.py``); ``tests/test_distill_dist.py`` pins our values to it.
``distill.dist.standardize`` z-scores the logits first (:mod:`orchestrator.distill.logit_std`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_flag, check_positive, check_weight, normalise_weights
from orchestrator.distill.logit_std import tempered
from orchestrator.distill.registry import LOGITS, Needs, TermSpec, register_preset, register_term

# The paper's CIFAR-100 settings (hunto/image_classification_sota at commit
# d9662f7df68fe46b973c4580b7c9b896cedcd301, the `classification` submodule of hunto/DIST_KD at
# 2418f18b1fedd7c2646a7b1b9a27d5c674c2170b: configs/strategies/distill/dist_cifar.yaml has kd: dist_t4,
# kd_loss_weight 2, ori_loss_weight 1; lib/models/losses/kd_loss.py builds DIST(beta=1, gamma=1, tau=4)).
# Its ImageNet settings differ only in tau = 1.
PAPER_DEFAULTS = {
    "distill.ce.weight": 1.0,
    "distill.dist.weight": 2.0,
    "distill.dist.beta": 1.0,
    "distill.dist.gamma": 1.0,
    "distill.dist.temperature": 4.0,
}
EPS = 1e-8  # keeps the correlation of a constant vector at 0 (e.g. the intra-class relation of a batch of 1)


def pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (same shapes); a constant vector correlates 0."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + EPS)


def relation_losses(p_s: Tensor, p_t: Tensor) -> tuple[Tensor, Tensor]:
    """(inter, intra) for predictions ``p_s``, ``p_t`` (B, C): 1 - mean correlation of rows, of columns."""
    return 1 - pearson(p_s, p_t, dim=1).mean(), 1 - pearson(p_s, p_t, dim=0).mean()


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | Sequence[Tensor],
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 4.0,
    weights: Sequence[float] | None = None,
    standardize: bool = False,
) -> Tensor:
    """``T^2 * (beta * inter + gamma * intra)`` of the student's and the teacher's softmax(logits / T).

    Args:
        student_logits: (B, C).  teacher_logits: (B, C), or M tensors (B, C) whose softmaxes are mixed
            with ``weights`` (uniform by default); no gradient reaches them. Computed in float32 at
            least (float64 stays float64).
        standardize: z-score every side's logits first (logit standardisation; T = base temperature).
    Returns:
        scalar, 0 when student and teacher agree up to an affine map of their predictions.
    """
    teachers = [teacher_logits] if isinstance(teacher_logits, Tensor) else list(teacher_logits)
    if any(t.shape != student_logits.shape for t in teachers) or student_logits.dim() != 2:
        raise ValueError(f"student and teacher logits must all be (B, C), got {tuple(student_logits.shape)} "
                         f"and {[tuple(t.shape) for t in teachers]}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    w = normalise_weights(weights, len(teachers))
    p_t = sum(wm * F.softmax(tempered(t.detach().to(dtype), temperature, standardize), dim=1)
              for wm, t in zip(w, teachers))
    p_s = F.softmax(tempered(student_logits.to(dtype), temperature, standardize), dim=1)
    inter, intra = relation_losses(p_s, p_t)
    return temperature**2 * (beta * inter + gamma * intra)


@dataclass
class DISTKnobs:
    """``distill.dist.*``: inter-class weight beta, intra-class weight gamma, temperature, the term's weight, and
    ``standardize`` (logit standardisation; the temperature is then the base temperature)."""

    beta: float = 1.0  # the inter-class relation's weight
    gamma: float = 1.0  # the intra-class relation's weight
    temperature: float = 4.0  # the softmax temperature (the base temperature with standardize)
    weight: float = 2.0  # the term's weight
    standardize: bool = False  # z-score the logits before the softmax (logit standardisation)

    def __post_init__(self):
        check_weight("beta", self.beta)
        check_weight("gamma", self.gamma)
        check_positive("temperature", self.temperature)
        check_weight("weight", self.weight)
        check_flag("standardize", self.standardize)


class DIST(Term):
    """dist_loss against the one teacher, or the teachers' weighted mean prediction."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0,
                 teacher_weights: Sequence[float] = (1.0,), standardize: bool = False):
        super().__init__()
        self.beta = check_weight("beta", beta)
        self.gamma = check_weight("gamma", gamma)
        self.temperature = check_positive("temperature", temperature)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_weights))
        self.standardize = check_flag("standardize", standardize)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.teacher_weights):
            raise ValueError(f"DIST was built for {len(self.teacher_weights)} teacher(s), got {len(batch.teachers)}")
        return dist_loss(batch.student.logits, [t.logits for t in batch.teachers], self.beta, self.gamma,
                         self.temperature, self.teacher_weights, self.standardize)


def build(ctx: TermContext, knobs: DISTKnobs) -> DIST:
    return DIST(knobs.beta, knobs.gamma, knobs.temperature, ctx.teacher_weights, knobs.standardize)


register_term(TermSpec(
    name="dist",
    reference="Huang et al., NeurIPS 2022; hunto/DIST_KD 2418f18 (image_classification_sota d9662f7 dist_kd.py)",
    build=build,
    knobs=DISTKnobs,
    needs=Needs(frozenset({LOGITS})),
    multi_teacher="outputs",
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("dist", ("ce", "dist"), PAPER_DEFAULTS)
