"""VGG with batch norm, sized for CIFAR as in the CRD paper (RepDistiller's ``models/vgg.py``, its ``*_bn`` nets).

Five blocks of 3x3 conv (with bias) -> BN -> ReLU, widths 64/128/256/512/512; a 2x2 max-pool follows
blocks 0-2 (32 -> 16 -> 8 -> 4; 28 -> 14 -> 7 -> 4), so blocks 3 and 4 share a resolution; global average
pooling and one linear layer (no VGG classifier MLP). ``VGG_BLOCKS`` lists each net's convs per block.
Two documented differences from RepDistiller, neither touching
parameters nor 32x32 behaviour: the pools round up (ceil mode), so odd maps keep their last row and
column; RepDistiller's extra pool after block 3 for 64x64 inputs (Tiny-ImageNet) is left out.

features = [stem (block 0), stage1..stage4 (blocks 1-4)] (RepDistiller's f0..f4, each after its ReLU;
with ``preact`` blocks 1-4 before it), embedding = global-average-pooled block-4 output (512).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import ModelOutput, register_model
from orchestrator.models.blocks import init_conv_weights, zoo_stage_names

# conv widths per block; the VGG-A/B/D/E configurations, and "vgg8" with one conv per block
VGG_BLOCKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def conv_block(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    """conv3x3 -> BN (-> ReLU between convs), ending at the last BN: its output is pre-activation."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_ch = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    stage_names = zoo_stage_names(4)

    def __init__(self, blocks: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        if len(blocks) != 5:
            raise ValueError(f"VGG needs 5 blocks of conv widths, got {len(blocks)}")
        self.preact = False
        convs = []
        for widths in blocks:
            convs.append(conv_block(in_channels, widths))
            in_channels = widths[-1]
        self.blocks = nn.ModuleList(convs)
        self.downsample = nn.MaxPool2d(2, 2, ceil_mode=True)  # after blocks 0, 1 and 2
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = in_channels
        self.classifier = nn.Linear(in_channels, num_classes)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> ModelOutput:
        features = []
        for i, block in enumerate(self.blocks):
            preact = block(x)
            x = F.relu(preact)
            features.append(preact if self.preact and i > 0 else x)
            if i < 3:
                x = self.downsample(x)
        embedding = self.pool(x).flatten(1)
        return ModelOutput(features, embedding, self.classifier(embedding))


def _register(name: str) -> None:
    def factory(num_classes: int, in_channels: int) -> VGG:
        return VGG(VGG_BLOCKS[name], num_classes, in_channels)

    factory.__name__ = name
    register_model(name)(factory)


for _name in VGG_BLOCKS:
    _register(_name)
