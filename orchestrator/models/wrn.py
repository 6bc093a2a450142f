"""Wide ResNets ``wrn_<depth>_<k>`` of the CRD paper (Zagoruyko & Komodakis 2016; RepDistiller's ``models/wrn.py``).

A 16-channel 3x3 stem conv, then three stages of ``(depth - 4) / 6`` pre-activation blocks
(BN-ReLU-conv3x3-BN-ReLU-conv3x3) of widths 16k/32k/64k (times the ``width`` knob, default 1), strides 1/2/2; each stage's output passes a
BN-ReLU (the next stage's input normalisation, or the final one before pooling). No dropout.

features = [stem conv, stage1, stage2, stage3] (RepDistiller's f0..f3; with ``preact`` the stages'
outputs after that BN, before its ReLU), embedding = global-average-pooled BN-ReLU'd stage-3 output (64k).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import ModelOutput, register_model
from orchestrator.models.blocks import init_conv_weights, zoo_stage_names


class PreActBlock(nn.Module):
    """(BN-ReLU) -> conv3x3 -> BN-ReLU -> conv3x3, plus the input (raw when widths match, else a strided
    1x1 conv of the activated input). ``normalise_input=False``: the input arrives already BN-ReLU'd."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, normalise_input: bool = True) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch) if normalise_input else None
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.projection = None if in_ch == out_ch and stride == 1 else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = x if self.bn1 is None else F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.projection is None else self.projection(act))


class WideResNet(nn.Module):
    stage_names = zoo_stage_names(3)

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, width: float = 1.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        blocks_per_stage = (depth - 4) // 6
        self.preact = False
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        stages, norms = [], []
        channels = 16
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        widths = [max(1, round(c * widen * width)) for c in (16, 32, 64)]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                downsamples = i > 0 and j == 0  # its input comes BN-ReLU'd by the previous stage's norm
                blocks.append(PreActBlock(channels, width, 2 if downsamples else 1, normalise_input=not downsamples))
                channels = width
            stages.append(nn.Sequential(*blocks))
            norms.append(nn.BatchNorm2d(width))
        self.stages = nn.ModuleList(stages)
        self.norms = nn.ModuleList(norms)  # BN of each stage's output: stage 2's and 3's input norm, the final one
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = channels
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        x = self.stem(x)
        features = [x]
        for stage, norm in zip(self.stages, self.norms):
            x = stage(x)
            normed = norm(x)
            features.append(normed if self.preact else x)
            x = F.relu(normed)
        embedding = self.pool(x).flatten(1)
        return ModelOutput(features, embedding, self.fc(embedding))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def factory(num_classes: int, in_channels: int, width: float = 1.0) -> WideResNet:
        """``width``: the stages' channels (16k/32k/64k) times this (rounded, at least 1)."""
        return WideResNet(depth, widen, num_classes, in_channels, width)

    factory.__name__ = name
    register_model(name)(factory)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
