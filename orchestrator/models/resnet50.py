"""The CRD paper's CIFAR ResNet-50 (He et al. 2016; RepDistiller's ``models/resnetv2.py``, ``ResNet50``).

The ImageNet ResNet-50's bottleneck stages (3/4/6/3 blocks of 1x1-3x3-1x1 convs, widths 64/128/256/512
expanded 4x to 256/512/1024/2048, strides 1/2/2/2, the stride on the 3x3 conv) behind a CIFAR stem: one
stride-1 3x3 conv to 64 channels with BN-ReLU and no max-pool, so a 32x32 image gives 32 -> 32 -> 16 -> 8 -> 4.
The teacher of the paper's cross-architecture pairs ResNet50 -> MobileNetV2 and ResNet50 -> vgg8.

features = [stem, stage1..stage4] (RepDistiller's f0..f4; with ``preact`` the stages' last block before its
ReLU), embedding = global-average-pooled stage-4 output (2048).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import register_model
from orchestrator.models.blocks import ReLUStage, StagedNet, init_conv_weights, projection_shortcut, zoo_stage_names

EXPANSION = 4  # a bottleneck's output channels per inner channel
BLOCKS = (3, 4, 6, 3)  # ResNet-50's blocks per stage
WIDTHS = (64, 128, 256, 512)  # inner channels per stage (outputs: 4x)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU -> conv3x3 (stride)-BN-ReLU -> conv1x1-BN, plus the (projected) input; returns the sum
    before its ReLU. (B, in_ch, H, W) -> (B, 4 * width, H / stride, W / stride)."""

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = EXPANSION * width
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)


class CifarResNet50(StagedNet):
    stage_names = zoo_stage_names(4)

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.preact = False
        self.stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]),
                                  nn.ReLU(inplace=True))
        stages = []
        channels = WIDTHS[0]
        for i, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS)):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(channels, width, stride=2 if (i > 0 and j == 0) else 1))
                channels = EXPANSION * width
            stages.append(ReLUStage(*stage))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = channels
        self.fc = nn.Linear(channels, num_classes)
        init_conv_weights(self)


@register_model("ResNet50")
def resnet50(num_classes: int, in_channels: int) -> CifarResNet50:
    return CifarResNet50(num_classes, in_channels)
