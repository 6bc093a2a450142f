"""MobileNetV2 at RepDistiller's CIFAR width (``models/mobilenetv2.py``, ``mobile_half``: expansion 6, width 0.5).

A stride-2 3x3 conv stem (16 channels), then inverted-residual blocks (1x1 expand -> BN-ReLU -> 3x3
depthwise -> BN-ReLU -> 1x1 project -> BN, plus the input when shapes match; the expansion conv is
there even at ratio 1, as in RepDistiller) of widths 8/12/16/32/48/80/160 (``BLOCKS``), a 1x1
conv-BN-ReLU to 1280 channels, global average pooling and one linear layer. 32x32 -> 16x16 at the stem,
2x2 before pooling (28x28: 14x14, 2x2).

features = [stem, stage1..stage4] (RepDistiller's f0..f4: after block groups 0-1, 2, 3-4, 5-6; the
groups end in a linear projection, so ``preact`` changes nothing, as in RepDistiller),
embedding = global-average-pooled 1280-channel head (1280).
"""

from __future__ import annotations

from torch import Tensor, nn

from orchestrator.models.base import ModelOutput, register_model
from orchestrator.models.blocks import init_conv_weights, zoo_stage_names

# (expansion, width at multiplier 1, blocks, first stride) per block group, MobileNetV2's table
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STAGE_ENDS = (1, 2, 4, 6)  # the block group after which each feature stage is taken
HEAD_WIDTH = 1280


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(out_ch)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.body = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, out_ch, 1, relu=False),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    stage_names = zoo_stage_names(len(STAGE_ENDS))

    def __init__(self, num_classes: int, in_channels: int, width: float = 0.5) -> None:
        super().__init__()
        self.preact = False  # no effect: every stage ends in a linear projection
        channels = max(1, int(32 * width))
        self.stem = conv_bn(in_channels, channels, 3, stride=2)
        groups = []
        for expansion, base_width, count, stride in BLOCKS:
            out_ch = max(1, int(base_width * width))
            blocks = []
            for i in range(count):
                blocks.append(InvertedResidual(channels, out_ch, stride if i == 0 else 1, expansion))
                channels = out_ch
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        head_width = max(HEAD_WIDTH, int(HEAD_WIDTH * width))  # widened above 1, never narrowed
        self.head = conv_bn(channels, head_width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = head_width
        self.classifier = nn.Linear(head_width, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        x = self.stem(x)
        features = [x]
        for i, group in enumerate(self.groups):
            x = group(x)
            if i in STAGE_ENDS:
                features.append(x)
        embedding = self.pool(self.head(x)).flatten(1)
        return ModelOutput(features, embedding, self.classifier(embedding))


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int, in_channels: int, width: float = 0.5) -> MobileNetV2:
    """``width``: MobileNetV2's width multiplier (RepDistiller's ``mobile_half`` = 0.5)."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return MobileNetV2(num_classes, in_channels, width=width)
