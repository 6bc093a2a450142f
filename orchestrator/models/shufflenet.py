"""ShuffleNet V1 and V2 at the CRD paper's CIFAR sizes (RepDistiller's ``models/ShuffleNetv1.py`` and
``models/ShuffleNetv2.py``: ``ShuffleV1`` = groups 3, widths 240/480/960; ``ShuffleV2`` = net size 1,
widths 116/232/464 and a 1024-channel head).

Both start with a 1x1 conv-BN-ReLU stem to 24 channels at full resolution, then three stages that each
halve the resolution (32 -> 16 -> 8 -> 4; 28 -> 14 -> 7 -> 4); global average pooling and one linear layer.

features = [stem, stage1, stage2, stage3] (RepDistiller's f0..f3; with ``preact`` the stages' last unit
before its final ReLU, as RepDistiller defines it), embedding = the pooled stage-3 output (V1, 960) or
the pooled 1024-channel head (V2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import register_model
from orchestrator.models.blocks import ReLUStage, StagedNet, init_conv_weights, zoo_stage_names


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(B, C, H, W) -> same shape, channels reordered so each group takes one from every group: g x C/g -> C/g x g."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_ch))


class ShuffleUnit(nn.Module):
    """ShuffleNet V1 unit: grouped 1x1 -> BN-ReLU -> shuffle -> depthwise 3x3 -> BN-ReLU -> grouped 1x1 -> BN,
    added to the input (stride 1) or concatenated with its 3x3 average pool (stride 2); returns that
    before the ReLU. ``squeeze_groups``: groups of the first 1x1 (1 on the 24-channel stem output)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, squeeze_groups: int) -> None:
        super().__init__()
        branch_ch = out_ch - in_ch if stride == 2 else out_ch
        mid = branch_ch // 4
        self.squeeze_groups = squeeze_groups
        self.squeeze = conv_bn(in_ch, mid, 1, groups=squeeze_groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn(mid, branch_ch, 1, groups=groups)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.squeeze(x)), self.squeeze_groups)
        out = self.expand(F.relu(self.depthwise(out)))
        return out + x if self.shortcut is None else torch.cat([out, self.shortcut(x)], 1)


class ShuffleNetV1(StagedNet):
    stage_names = zoo_stage_names(3)

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], groups: int,
                 num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.preact = False
        self.stem = nn.Sequential(conv_bn(in_channels, 24, 1), nn.ReLU(inplace=True))
        channels, stages = 24, []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            units = []
            for j in range(depth):
                squeeze_groups = 1 if i == j == 0 else groups
                units.append(ShuffleUnit(channels, width, 2 if j == 0 else 1, groups, squeeze_groups))
                channels = width
            stages.append(ReLUStage(*units))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = channels
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)


class SplitUnit(nn.Module):
    """ShuffleNet V2 basic unit: half the channels pass through, the other half go 1x1 -> BN-ReLU ->
    depthwise 3x3 -> BN -> 1x1 -> BN (-> ReLU); concatenated, then shuffled in 2 groups.
    forward -> (out, preact), preact = the concatenation before the ReLU, unshuffled (RepDistiller's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), nn.ReLU(inplace=True),
                                    conv_bn(half, half, 3, groups=half), conv_bn(half, half, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, transformed = x.chunk(2, dim=1)
        branch = self.branch(transformed)
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], 1), 2)
        return out, torch.cat([kept, branch], 1)


class DownUnit(nn.Module):
    """ShuffleNet V2 down-sampling unit: two stride-2 branches (depthwise 3x3 -> BN -> 1x1 -> BN-ReLU, and
    1x1 -> BN-ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN-ReLU), each to half the output width; concatenated
    and shuffled in 2 groups."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = out_ch // 2
        self.left = nn.Sequential(conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), conv_bn(in_ch, half, 1),
                                  nn.ReLU(inplace=True))
        self.right = nn.Sequential(conv_bn(in_ch, half, 1), nn.ReLU(inplace=True),
                                   conv_bn(half, half, 3, 2, groups=half), conv_bn(half, half, 1),
                                   nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleV2Stage(nn.Module):
    """A down-sampling unit then ``depth`` basic units; forward -> (out, the last unit's preact)."""

    def __init__(self, in_ch: int, out_ch: int, depth: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"a ShuffleNet V2 stage needs at least one basic unit, got {depth}")
        self.down = DownUnit(in_ch, out_ch)
        self.units = nn.ModuleList(SplitUnit(out_ch) for _ in range(depth))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.down(x)
        for unit in self.units:
            x, preact = unit(x)
        return x, preact


class ShuffleNetV2(StagedNet):
    stage_names = zoo_stage_names(3)

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], head_width: int,
                 num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.preact = False
        self.stem = nn.Sequential(conv_bn(in_channels, 24, 1), nn.ReLU(inplace=True))
        channels, stages = 24, []
        for width, depth in zip(widths, depths):
            stages.append(ShuffleV2Stage(channels, width, depth))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(conv_bn(channels, head_width, 1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = head_width
        self.fc = nn.Linear(head_width, num_classes)
        init_conv_weights(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.pool(self.head(x)).flatten(1)


@register_model("ShuffleV1")
def shufflev1(num_classes: int, in_channels: int) -> ShuffleNetV1:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)


@register_model("ShuffleV2")
def shufflev2(num_classes: int, in_channels: int) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), 1024, num_classes, in_channels)
