"""Distillation objectives (plain PyTorch) and :func:`build_distiller`.

Methods (``distill.method``): ce, kd, crd, crd_kd, dkd. With one teacher the
single-teacher objectives are built; with several, their ensemble versions
(``teacher`` is then a list of ModelOutputs, one per teacher); dkd has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from orchestrator.config import DistillConfig
from orchestrator.distill.base import Distiller, TeacherOutputs
from orchestrator.distill.ce import CEDistiller
from orchestrator.distill.crd import ContrastiveDistiller, CRDDistiller, CRDLoss, Embed
from orchestrator.distill.crd import PAPER_DEFAULTS as CRD_DEFAULTS
from orchestrator.distill.crd_kd import PAPER_DEFAULTS as CRD_KD_DEFAULTS
from orchestrator.distill.crd_kd import CRDKDDistiller
from orchestrator.distill.dkd import PAPER_DEFAULTS as DKD_DEFAULTS
from orchestrator.distill.dkd import DKDDistiller, dkd_loss
from orchestrator.distill.ensemble import (
    EnsembleCRDDistiller,
    EnsembleCRDKDDistiller,
    EnsembleKDDistiller,
    ensemble_kd_loss,
)
from orchestrator.distill.kd import PAPER_DEFAULTS as KD_DEFAULTS
from orchestrator.distill.kd import KDDistiller, kd_loss
from orchestrator.distill.memory import ContrastMemory, contrast_scores, nce_loss

__all__ = [
    "Distiller",
    "TeacherOutputs",
    "CEDistiller",
    "KDDistiller",
    "CRDDistiller",
    "CRDKDDistiller",
    "DKDDistiller",
    "ContrastiveDistiller",
    "EnsembleKDDistiller",
    "EnsembleCRDDistiller",
    "EnsembleCRDKDDistiller",
    "CRDLoss",
    "ContrastMemory",
    "Embed",
    "kd_loss",
    "dkd_loss",
    "ensemble_kd_loss",
    "nce_loss",
    "contrast_scores",
    "build_distiller",
    "method_names",
    "paper_defaults",
]


def _crd_kwargs(cfg: DistillConfig, negatives: str, seed: int) -> dict[str, Any]:
    c = cfg.crd
    return dict(
        gamma=cfg.gamma,
        beta=cfg.beta,
        feat_dim=c.feat_dim,
        nce_k=c.nce_k,
        nce_t=c.nce_t,
        momentum=c.momentum,
        z_mode=c.z_mode,
        negatives_mode=c.negatives_mode,
        negatives=negatives,
        seed=seed,
    )


def _build_ce(cfg, student_dim, teacher_dims, train_labels, negatives, seed, weights) -> Distiller:
    return CEDistiller(gamma=cfg.gamma)


def _build_kd(cfg, student_dim, teacher_dims, train_labels, negatives, seed, weights) -> Distiller:
    if len(teacher_dims) == 1:
        return KDDistiller(gamma=cfg.gamma, alpha=cfg.alpha, temperature=cfg.kd.temperature)
    return EnsembleKDDistiller(
        len(teacher_dims),
        gamma=cfg.gamma,
        alpha=cfg.alpha,
        temperature=cfg.kd.temperature,
        teacher_weights=weights,
    )


def _build_crd(cfg, student_dim, teacher_dims, train_labels, negatives, seed, weights) -> Distiller:
    kw = _crd_kwargs(cfg, negatives, seed)
    if len(teacher_dims) == 1:
        return CRDDistiller(student_dim, teacher_dims[0], train_labels, **kw)
    return EnsembleCRDDistiller(student_dim, teacher_dims, train_labels, teacher_weights=weights, **kw)


def _build_crd_kd(cfg, student_dim, teacher_dims, train_labels, negatives, seed, weights) -> Distiller:
    kw = _crd_kwargs(cfg, negatives, seed)
    kw.update(alpha=cfg.alpha, temperature=cfg.kd.temperature)
    if len(teacher_dims) == 1:
        return CRDKDDistiller(student_dim, teacher_dims[0], train_labels, **kw)
    return EnsembleCRDKDDistiller(student_dim, teacher_dims, train_labels, teacher_weights=weights, **kw)


def _build_dkd(cfg, student_dim, teacher_dims, train_labels, negatives, seed, weights) -> Distiller:
    if len(teacher_dims) != 1:
        raise ValueError(f"method 'dkd' supports one teacher (it has no ensemble version), got {len(teacher_dims)} teachers")
    d = cfg.dkd
    return DKDDistiller(gamma=cfg.gamma, alpha=d.alpha, beta=d.beta, temperature=d.temperature, warmup=d.warmup)


_Builder = Callable[..., Distiller]
_METHODS: dict[str, tuple[_Builder, bool]] = {  # name -> (builder, needs a teacher)
    "ce": (_build_ce, False),
    "kd": (_build_kd, True),
    "crd": (_build_crd, True),
    "crd_kd": (_build_crd_kd, True),
    "dkd": (_build_dkd, True),
}


_PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ce": {}, "kd": KD_DEFAULTS, "crd": CRD_DEFAULTS, "crd_kd": CRD_KD_DEFAULTS, "dkd": DKD_DEFAULTS,
}


def method_names() -> list[str]:
    return sorted(_METHODS)


def paper_defaults(method: str) -> dict[str, Any]:
    """The paper's values of ``method``'s knobs, as dotted config keys (empty for ``ce``)."""
    if method not in _PAPER_DEFAULTS:
        raise ValueError(f"unknown distillation method '{method}'; known methods: {', '.join(method_names())}")
    return dict(_PAPER_DEFAULTS[method])


def build_distiller(
    cfg: DistillConfig,
    *,
    num_classes: int,
    student_dim: int,
    teacher_dims: Sequence[int],
    train_labels: Tensor,
    negatives: str = "class",
    seed: int = 0,
    teacher_weights: Sequence[float] | None = None,
) -> Distiller:
    """The Distiller for ``cfg.method``.

    Args:
        cfg: ``DistillConfig`` (method, gamma/alpha/beta, kd.*, crd.*, dkd.*).
        num_classes: C (labels must lie in [0, C)).
        student_dim: student embedding size; teacher_dims: one size per teacher
            (one -> single-teacher objective, several -> ensemble objective).
        train_labels: (N,) training labels; N sizes the CRD memory banks.
        negatives: CRD negatives "class" or "uniform" (``data.negatives``).
        seed: seeds negative sampling and bank initialisation (same on every rank).
        teacher_weights: optional per-teacher weights for ensembles (normalised to sum 1).
    """
    if cfg.method not in _METHODS:
        raise ValueError(f"unknown distillation method '{cfg.method}'; known methods: {', '.join(method_names())}")
    builder, needs_teacher = _METHODS[cfg.method]
    teacher_dims = [int(d) for d in teacher_dims]
    if needs_teacher and not teacher_dims:
        raise ValueError(f"method '{cfg.method}' needs at least one teacher (teacher_dims is empty)")
    if teacher_weights is not None and len(teacher_weights) != len(teacher_dims):
        raise ValueError(f"teacher_weights has {len(teacher_weights)} entries for {len(teacher_dims)} teachers")
    labels = train_labels.reshape(-1)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"train_labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return builder(cfg, student_dim, teacher_dims, labels, negatives, seed, teacher_weights)
