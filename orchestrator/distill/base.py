"""The Distiller contract shared by every objective."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from orchestrator.models.base import ModelOutput

TeacherOutputs = ModelOutput | Sequence[ModelOutput] | None


class Distiller(nn.Module):
    """One distillation objective.

    Holds the loss's own trainable parts (e.g. CRD embedding heads) and state
    (e.g. memory banks). ``forward`` returns named, already-weighted loss terms
    (``{"ce": ..., "kd": ..., "crd": ...}``); the training loss is their sum.
    """

    needs_teacher: bool = True

    def forward(
        self,
        student: ModelOutput,
        teacher: TeacherOutputs,
        labels: Tensor,
        indices: Tensor,
    ) -> dict[str, Tensor]:
        """student/teacher outputs for a batch, labels (B,), dataset indices (B,)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch (0-based) for objectives with a schedule (DKD's warm-up)."""
