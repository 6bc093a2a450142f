"""timm models behind the ModelOutput contract: ``timm:<name>`` (e.g. ``timm:resnet18``).

``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``
(random init, never a download), wrapped so that:

- ``features``: the stage outputs of ``forward_intermediates`` (B, C_i, H_i, W_i)
  when the model has it, else the 4-D output of ``forward_features``;
- ``embedding``: ``forward_head(..., pre_logits=True)`` (B, D), D = the head's input;
- ``logits``: the classifier (``get_classifier()``) applied to the embedding (B, num_classes).

Small inputs (8x8 digits) work for convolutional models whose stages pad
(ResNets, EfficientNets); ViTs need the image size they were built for.
"""

from __future__ import annotations

import timm
from torch import Tensor, nn

from orchestrator.models.base import TIMM_PREFIX as PREFIX
from orchestrator.models.base import ModelOutput, register_family


class TimmAdapter(nn.Module):
    """A timm classifier ``net`` returning ``ModelOutput``; see the module docstring."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.embedding_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)

    def forward(self, x: Tensor) -> ModelOutput:
        if hasattr(self.net, "forward_intermediates"):
            final, stages = self.net.forward_intermediates(x)
        else:
            final = self.net.forward_features(x)
            stages = [final]
        embedding = self.net.forward_head(final, pre_logits=True)
        logits = self.net.get_classifier()(embedding)
        return ModelOutput([f for f in stages if f.dim() == 4], embedding, logits)


def create(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """The bare timm model (random init); an unknown name says where to look."""
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model '{name}'; see timm.list_models() for the names")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def timm_model(name: str, num_classes: int, in_channels: int) -> TimmAdapter:
    return TimmAdapter(create(name, num_classes, in_channels))


register_family(PREFIX, timm_model, timm.is_model)
