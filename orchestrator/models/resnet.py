"""CIFAR-style ResNets of the CRD paper (Tian et al. 2020; RepDistiller's ``models/resnet.py``).

``resnet<depth>`` has a 16-channel stem and stages of widths 16/32/64, ``resnet<depth>x4`` a 32-channel
stem and widths 64/128/256; ``(depth - 2) / 6`` basic blocks per stage, strides 1/2/2 (the ``width`` knob scales every width); the stem is a
stride-1 3x3 conv (no max-pool), so these nets are meant for 32x32 images and are slow at full
resolution on a CPU (see docs/MODELS.md).

features = [stem, stage1, stage2, stage3] (RepDistiller's f0..f3; with ``preact`` the stages' last
block before its ReLU), embedding = global-average-pooled stage-3 output (64 or 256).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import register_model
from orchestrator.models.blocks import ReLUStage, StagedNet, init_conv_weights, projection_shortcut, zoo_stage_names


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input; returns the sum before its ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)


class CifarResNet(StagedNet):
    stage_names = zoo_stage_names(3)

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.preact = False
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages = []
        channels = widths[0]
        for i, width in enumerate(widths[1:]):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride=2 if (i > 0 and j == 0) else 1))
                channels = width
            stages.append(ReLUStage(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = channels
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def factory(num_classes: int, in_channels: int, width: float = 1.0) -> CifarResNet:
        """``width``: every stage's (and the stem's) channels times this (rounded, at least 1)."""
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        return CifarResNet(depth, tuple(max(1, round(w * width)) for w in widths), num_classes, in_channels)

    factory.__name__ = name
    register_model(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
