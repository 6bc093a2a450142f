"""Plain conv-BN-ReLU networks sized for 28x28 grey images on a laptop CPU.

Sizing rule: compute (FLOPs), not parameter count, sets the speed on a CPU,
and most of it is spent at high resolution. So every net here runs a single
cheap convolution at full resolution (or none) and down-samples early.
Measured numbers (params, FLOPs, img/s, accuracy) are in docs/MODELS.md.

Each stage is a list of ``(out_channels, stride)`` 3x3 convolutions; the
stage's output is one entry of ``ModelOutput.features``. The embedding is the
global-average-pooled output of the last stage, so any input of at least 8x8
works and ``embedding_dim`` is the last stage's width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from orchestrator.models.base import ModelOutput, register_model
from orchestrator.models.blocks import init_conv_weights

StageSpec = Sequence[Sequence[tuple[int, int]]]


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Module):
    """Stages of 3x3 conv-BN-ReLU, global average pooling, one linear classifier.

    stages: e.g. ``[[(32, 1)], [(32, 2), (64, 1)]]`` = stage 1 one conv to 32
    channels at full resolution, stage 2 a stride-2 conv to 32 then a conv to 64.
    """

    def __init__(self, stages: StageSpec, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if not stages or any(not stage for stage in stages):
            raise ValueError("ConvNet needs at least one stage and no empty stage")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        blocks = []
        channels = in_channels
        for stage in stages:
            layers = []
            for out_ch, stride in stage:
                layers.append(conv_bn_relu(channels, out_ch, stride))
                channels = out_ch
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = channels
        self.classifier = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        embedding = self.pool(x).flatten(1)
        return ModelOutput(features, embedding, self.classifier(embedding))


# Teacher: 15.8 M MACs at 28x28; 28 -> 14 -> 7 -> 4; receptive field 45 px; embedding 128.
TEACHER = [[(32, 1)], [(32, 2), (64, 1)], [(64, 2), (128, 1)], [(128, 2), (128, 1)]]
# Second teacher architecture, different embedding size (256): 15.8 M MACs.
TEACHER_WIDE = [[(32, 1)], [(32, 2), (64, 1)], [(64, 2), (128, 1)], [(256, 2)]]
# Students, >= 10x fewer FLOPs than the teacher: stride-2 stem, one conv per stage.
STUDENT_SMALL = [[(16, 2)], [(32, 2)], [(64, 2)]]  # 0.55 M MACs, embedding 64
STUDENT_TINY = [[(8, 2)], [(16, 2)], [(32, 1)]]  # 0.30 M MACs, embedding 32


@register_model("cnn_teacher")
def cnn_teacher(num_classes: int, in_channels: int) -> ConvNet:
    return ConvNet(TEACHER, num_classes, in_channels)


@register_model("cnn_teacher_wide")
def cnn_teacher_wide(num_classes: int, in_channels: int) -> ConvNet:
    return ConvNet(TEACHER_WIDE, num_classes, in_channels)


def sized(stages: StageSpec, width: float = 1.0, depth: int = 1) -> list[list[tuple[int, int]]]:
    """``stages`` with every width scaled by ``width`` (rounded, at least 1) and each stage ending in
    ``depth - 1`` more stride-1 convolutions at its last width (a student's size knobs)."""
    if width <= 0 or depth < 1:
        raise ValueError(f"width must be > 0 and depth >= 1, got width={width}, depth={depth}")
    out = []
    for stage in stages:
        convs = [(max(1, round(ch * width)), stride) for ch, stride in stage]
        out.append(convs + [(convs[-1][0], 1)] * (depth - 1))
    return out


@register_model("cnn_student_small")
def cnn_student_small(num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1) -> ConvNet:
    return ConvNet(sized(STUDENT_SMALL, width, depth), num_classes, in_channels)


@register_model("cnn_student_tiny")
def cnn_student_tiny(num_classes: int, in_channels: int, width: float = 1.0, depth: int = 1) -> ConvNet:
    return ConvNet(sized(STUDENT_TINY, width, depth), num_classes, in_channels)
