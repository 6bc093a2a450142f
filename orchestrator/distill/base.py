"""The term contract: what a loss term receives when it is built and on every batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from orchestrator.models.base import ModelOutput, Shapes


class Batch(NamedTuple):
    """One training batch as every term sees it.

    student: the student's ModelOutput (logits (B, C), embedding (B, Ds), features by stage).
    teachers: one ModelOutput per teacher (empty when no enabled term reads a teacher); fields
        no enabled term reads may be empty.
    labels: (B,) class indices, or UNLABELLED (-1) for a sample whose label is hidden
        (``data.labeled_fraction``); a term whose ``Needs.labels`` is set only ever gets the labelled rows.
    indices: (B,) dataset indices of the samples.
    images: (B, C, H, W) the student's input batch (terms with networks of their own, e.g. peers, run them on it).
    student_views: the student's outputs on further augmentations of the same images (row i: image i), only
        for a term whose ``Needs.student_views`` > 1 and only with augmented data (else empty): with
        ``student_views=2``, one ModelOutput (the second view). The teachers never see these views.
    view_images: those views' input images, (B, C, H, W) each (terms with networks of their own run them too).
    """

    student: ModelOutput
    teachers: list[ModelOutput]
    labels: Tensor
    indices: Tensor
    images: Tensor | None = None
    student_views: tuple[ModelOutput, ...] = ()
    view_images: tuple[Tensor, ...] = ()


def split_views(out: ModelOutput, count: int) -> list[ModelOutput]:
    """The outputs of a forward over ``count`` stacked views (each B rows, view-major) as one ModelOutput per view."""
    features = [f.chunk(count) for f in out.features]
    embedding, logits = out.embedding.chunk(count), out.logits.chunk(count)
    return [ModelOutput([f[v] for f in features], embedding[v], logits[v]) for v in range(count)]


@dataclass(frozen=True)
class TermContext:
    """What a term's ``build`` gets besides its knobs.

    num_classes: C.  student: the student's Shapes.  teachers: one Shapes per teacher.
    teacher_weights: M weights summing to 1 (ensembles).  train_labels: (N,) labels of the
    train split (N sizes memory banks), UNLABELLED (-1) where hidden.
    seed: the training seed (same on every rank).
    make_student: builds a fresh network of the student's architecture (terms that train peers).
    """

    num_classes: int
    student: Shapes
    teachers: tuple[Shapes, ...]
    teacher_weights: tuple[float, ...]
    train_labels: Tensor
    seed: int = 0
    make_student: Callable[[], nn.Module] | None = None


class Term(nn.Module):
    """An unweighted loss term: ``forward(batch) -> scalar``.

    Holds the term's own trainable parts (heads, connectors) and state (memory banks).
    ``set_epoch`` is called with the 0-based epoch before each epoch (schedules, e.g. DKD's warm-up).
    A term that declares a pre-stage (``TermSpec.pre_stage``) implements ``pre_stage_loss``: the loss of
    its initialisation epochs (e.g. connectors or a paraphraser), trained before distillation starts.
    """

    def forward(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def pre_stage_loss(self, batch: Batch) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares no pre-stage")

    def use_identity_parts(self) -> None:
        """Replace the learnable parts that the term's loss formula lacks (CC's heads, FitNet's and AB's
        connectors, FT's paraphraser and translator) by identities, so that on plain tensors it computes the bare
        formula (checks against a reference). A term without parameters has nothing to replace; one whose parts
        are its method's own (CRD's heads, VID's regressors, peers) raises ValueError, as do those terms where
        the shapes do not allow an identity."""
        if any(True for _ in self.parameters()):
            raise ValueError(f"{type(self).__name__}'s learnable parts have no identity replacement (they are its "
                             "method's own, or a knob selects identities, e.g. connectors=none)")

    def networks(self) -> dict[str, nn.Module]:
        """Networks this term trains besides the student (peers), by name; they are evaluated too."""
        return {}

    def set_epoch(self, epoch: int) -> None:
        """Most terms have no schedule."""
