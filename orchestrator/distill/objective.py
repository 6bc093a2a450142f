"""The training objective: a weighted sum of registered terms, built from ``distill.*``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from orchestrator.data.split import UNLABELLED
from orchestrator.distill import registry
from orchestrator.distill.base import Batch, Shapes, TermContext
from orchestrator.distill.checks import check_weight, normalise_weights
from orchestrator.models.base import ModelOutput


class Objective(nn.Module):
    """``forward(student, teachers, labels, indices) -> {term: weight * term(batch)}``, in method order.

    The training loss is the sum of the values; each is logged as ``train/loss_<term>``.
    ``terms`` (a ModuleDict) holds the terms' trainable parts and state. The terms named in
    ``labelled_only`` (those that read labels, when some training labels are hidden) get the batch's
    labelled rows only, and contribute 0 (with a gradient path to their parts) to a batch without any.
    Only the terms named in ``view_readers`` (``Needs.student_views`` > 1) see ``Batch.student_views`` and
    ``Batch.view_images``.
    """

    def __init__(
        self, terms: dict[str, nn.Module], weights: dict[str, float], needs: registry.Needs,
        pre_stage_epochs: dict[str, int] | None = None, labelled_only: Sequence[str] = (),
        view_readers: Sequence[str] = (),
    ):
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} differ")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: check_weight(f"weight of {name}", w) for name, w in weights.items()}
        self.needs = needs
        self.pre_stage_epochs = {name: int(e) for name, e in (pre_stage_epochs or {}).items() if e > 0}
        self.labelled_only = frozenset(labelled_only)
        self.view_readers = frozenset(view_readers)

    def networks(self) -> dict[str, nn.Module]:
        """The networks the terms train besides the student (e.g. peers), by name."""
        return {name: net for t in self.terms.values() for name, net in t.networks().items()}

    @property
    def pre_stage_length(self) -> int:
        """Epochs of pre-stage before distillation (the longest of the terms'; 0 = none)."""
        return max(self.pre_stage_epochs.values(), default=0)


    @property
    def needs_teacher(self) -> bool:
        return self.needs.teacher

    def set_epoch(self, epoch: int) -> None:
        """Called by the Learner before each epoch (0-based)."""
        for t in self.terms.values():
            t.set_epoch(epoch)

    def forward(
        self, student: ModelOutput, teachers: ModelOutput | Sequence[ModelOutput], labels: Tensor, indices: Tensor,
        pre_stage_epoch: int | None = None, images: Tensor | None = None,
        student_views: Sequence[ModelOutput] = (), view_images: Sequence[Tensor] = (),
    ) -> dict[str, Tensor]:
        """The weighted terms; with ``pre_stage_epoch`` (0-based) instead the pre-stage losses of the terms
        still in their pre-stage (unweighted), e.g. connector initialisation. ``images``: the input batch;
        ``student_views``, ``view_images``: the student's outputs on further augmentations of it and those
        augmentations (for ``view_readers``)."""
        teachers = [teachers] if isinstance(teachers, ModelOutput) else list(teachers)  # one teacher may come bare
        batch = Batch(student, teachers, labels, indices, images, tuple(student_views), tuple(view_images))
        labelled = labelled_rows(batch) if self.labelled_only else batch

        def run(name: str, fn) -> Tensor:
            b = batch if name not in self.labelled_only else labelled
            if b is None:
                return _zero(self.terms[name], batch)
            if name in self.view_readers or not (b.student_views or b.view_images):
                return fn(b)
            return fn(b._replace(student_views=(), view_images=()))

        if pre_stage_epoch is not None:
            return {name: run(name, self.terms[name].pre_stage_loss)
                    for name, epochs in self.pre_stage_epochs.items() if pre_stage_epoch < epochs}
        return {name: self.weights[name] * run(name, t) for name, t in self.terms.items()}


def labelled_rows(batch: Batch) -> Batch | None:
    """``batch`` restricted to its labelled samples (itself when all are; None when none is).

    Every per-sample tensor (B leading rows) of the student, its other views and the teachers is sliced;
    fields that no term reads (empty tensors) stay as they are.
    """
    keep = batch.labels != UNLABELLED  # (B,)
    count = int(keep.sum())
    if count == keep.numel():
        return batch
    if count == 0:
        return None

    def rows(out: ModelOutput) -> ModelOutput:
        def take(t: Tensor) -> Tensor:
            return t[keep] if t.dim() and t.shape[0] == keep.numel() else t

        return ModelOutput([take(f) for f in out.features], take(out.embedding), take(out.logits))

    images = None if batch.images is None else batch.images[keep]
    return Batch(rows(batch.student), [rows(t) for t in batch.teachers], batch.labels[keep], batch.indices[keep],
                 images, tuple(rows(v) for v in batch.student_views), tuple(v[keep] for v in batch.view_images))


def _zero(term: nn.Module, batch: Batch) -> Tensor:
    """0, connected to the student's logits and the term's trainable parts (DDP expects a gradient for each)."""
    zero = batch.student.logits.sum() * 0.0
    for p in term.parameters():
        if p.requires_grad:
            zero = zero + p.sum() * 0.0
    return zero


def build_objective(
    cfg: Any,
    *,
    num_classes: int,
    student: Shapes,
    teachers: Sequence[Shapes],
    train_labels: Tensor,
    seed: int = 0,
    teacher_weights: Sequence[float] | None = None,
    make_student: Callable[[], nn.Module] | None = None,
) -> Objective:
    """The Objective for ``cfg.method`` (``cfg``: the ``distill`` config section).

    Args:
        num_classes: C (labels must lie in [0, C)).
        student: the student's Shapes; teachers: one Shapes per teacher (several -> ensemble).
        train_labels: (N,) training labels, UNLABELLED (-1) where hidden; N sizes memory banks. With hidden
            labels, the terms that read labels see only the labelled rows of each batch.
        seed: seeds negative sampling and bank initialisation (same on every rank).
        teacher_weights: optional per-teacher weights (normalised to sum 1; default uniform).
        make_student: builds a fresh student-architecture network (for terms that train peers).
    Terms are built in method order (their parameters draw from the global RNG in that order).
    """
    names = registry.method_terms(cfg.method)
    needs = registry.teacher_needs(cfg)
    teachers = list(teachers)
    if needs.teacher and not teachers:
        raise ValueError(f"method '{cfg.method}' needs at least one teacher (none given)")
    problem = registry.supports_teachers(cfg, len(teachers))
    if problem:
        raise ValueError(problem)
    if teacher_weights is not None and len(teacher_weights) != len(teachers):
        raise ValueError(f"teacher_weights has {len(teacher_weights)} entries for {len(teachers)} teachers")
    labels = train_labels.reshape(-1)
    known = labels[labels != UNLABELLED]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) >= num_classes):
        raise ValueError(f"train_labels must lie in [0, {num_classes}) or be {UNLABELLED} (unlabelled), "
                         f"got [{int(known.min())}, {int(known.max())}]")
    if labels.numel() and not known.numel():
        raise ValueError("every training label is hidden; data.labeled_fraction keeps at least one")
    ctx = TermContext(
        num_classes=num_classes, student=student, teachers=tuple(teachers),
        teacher_weights=normalise_weights(teacher_weights, len(teachers)) if teachers else (),
        train_labels=labels, seed=seed, make_student=make_student,
    )
    terms = {name: registry.term(name).build(ctx, registry.knobs_of(cfg, name)) for name in names}
    pre = {name: getattr(registry.knobs_of(cfg, name), registry.term(name).pre_stage)
           for name in names if registry.term(name).pre_stage}
    partial = bool(known.numel() < labels.numel())  # some labels hidden: label-reading terms see labelled rows
    labelled_only = registry.label_readers(cfg) if partial else []
    return Objective(terms, registry.weights(cfg), needs, pre, labelled_only, registry.view_readers(cfg))
