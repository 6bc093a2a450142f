"""Pieces shared by the CIFAR zoo (resnet, wrn, vgg, mobilenetv2, shufflenet).

Zoo models name their feature stages ``stem, stage1, ..., stageN`` (``stage_names``) and carry a
``preact`` switch: ``False`` (default) returns each stage's output, ``True`` its pre-ReLU value where
RepDistiller's ``is_feat=True, preact=True`` does (the AB distiller reads those). The switch changes
no parameter and no feature shape.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.models.base import ModelOutput


def init_conv_weights(model: nn.Module) -> None:
    """He-normal (fan-out) initialisation of every Conv2d weight; other layers keep PyTorch's defaults."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def zoo_stage_names(count: int) -> tuple[str, ...]:
    """``("stem", "stage1", ..., "stage<count>")``: the stem's output, then ``count`` stages."""
    return ("stem", *(f"stage{i + 1}" for i in range(count)))


class ReLUStage(nn.Sequential):
    """Blocks that each return their pre-activation; a ReLU follows every block.

    forward(x) -> (out, preact): the stage's output and its last block's pre-ReLU value, both (B, C, H, W).
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        preact = x
        for block in self:
            preact = block(x)
            x = F.relu(preact)
        return x, preact


class StagedNet(nn.Module):
    """The forward of the zoo models built as stem -> stages returning (out, preact) -> pool -> fc.

    Subclasses set ``stem``, ``stages`` (each returns ``(out, preact)``), ``pool``, ``fc`` and ``preact``.
    forward(x (B, C, H, W)) -> ModelOutput(features = [stem, stage outputs (pre-ReLU with ``preact``)],
    embedding (B, D) = the pooled last stage, logits (B, num_classes)).
    """

    def forward(self, x: Tensor) -> ModelOutput:
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x, preact = stage(x)
            features.append(preact if self.preact else x)
        embedding = self.embed(x)
        return ModelOutput(features, embedding, self.fc(embedding))

    def embed(self, x: Tensor) -> Tensor:
        """The last stage's output (B, C, H, W) -> the embedding (B, D)."""
        return self.pool(x).flatten(1)


def projection_shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """A residual block's shortcut: the identity, or conv1x1 (stride)-BN where the shape changes.
    (B, in_ch, H, W) -> (B, out_ch, H / stride, W / stride)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
