"""Tiny test-only models (a few thousand parameters) for 8x8 digits.

Seconds to train, so tests of the distillers, the training loop and the sweep
can run real models on real data. The teacher and the student differ in
width and embedding size (32 vs 16), like a real teacher/student pair.
"""

from __future__ import annotations

from orchestrator.models.base import register_model
from orchestrator.models.cnn import ConvNet, sized

# 8x8 -> 8x8 (16 ch) -> 4x4 (32 ch): ~5.2 k params.
TINY_TEACHER = [[(16, 1)], [(32, 2)]]
# 8x8 -> 8x8 (8 ch) -> 4x4 (16 ch): ~1.4 k params.
TINY_STUDENT = [[(8, 1)], [(16, 2)]]


@register_model("tiny_teacher")
def tiny_teacher(num_classes: int, in_channels: int) -> ConvNet:
    return ConvNet(TINY_TEACHER, num_classes, in_channels)


@register_model("tiny_student")
def tiny_student(num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1) -> ConvNet:
    return ConvNet(sized(TINY_STUDENT, width, depth), num_classes, in_channels)
