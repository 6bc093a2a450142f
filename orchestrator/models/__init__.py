"""Model zoo: every model maps images to ``ModelOutput(features, embedding, logits)``.

Importing this package registers all models; build one with
``build_model(name, num_classes, in_channels)``; ``timm:<name>`` builds any timm model, ``tv_<name>`` a
torchvision one (their libraries are imported on first use).
"""

from __future__ import annotations

import torch
from torch import nn

# registers the zoo; torchvision's (tv_) and timm's (timm:) models register when a name of theirs is first asked for
from orchestrator.models import cnn, mobilenetv2, resnet, resnet50, shufflenet, tiny, vgg, wrn  # noqa: F401
from orchestrator.models.base import ModelOutput, build_model, model_names, register_model

__all__ = ["ModelOutput", "build_model", "describe_model", "model_names", "register_model"]


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``x`` through ``model``: torch's FlopCounterMode
    (convolutions, matrix products and attention, followed through the real shapes, strides and groups)
    halved. BN, activations, pooling, additions and biases are not counted, the usual convention; on
    conv/linear networks this equals the hand count (tests/test_cost.py checks one)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def describe_model(model: nn.Module, in_channels: int, image_size: int) -> dict[str, int]:
    """Size of ``model`` for one ``in_channels x image_size x image_size`` image.

    Returns ``params`` (all parameters), ``macs`` (conv + linear multiply-
    accumulates per image), ``flops`` (= 2 x macs, i.e. multiplies and adds
    counted separately) and ``embedding_dim``. The model's train/eval mode is
    restored; no gradients are taken.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_channels, image_size, image_size, device=device)
    model.eval()
    try:
        with torch.no_grad():
            macs = count_macs(model, x)
    finally:
        model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": macs,
        "flops": 2 * macs,
        "embedding_dim": int(model.embedding_dim),
    }
