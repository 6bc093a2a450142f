"""A student as an ONNX or TorchScript graph: images (B, C, H, W) -> logits (B, num_classes), free batch size."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn


class LogitsOnly(nn.Module):
    """``model(x).logits``: (B, C, H, W) -> (B, num_classes), the graph that is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits


def to_onnx(model: nn.Module, example: Tensor, path: Path) -> Path:
    """ONNX (TorchScript-based exporter, opset 17) with a dynamic batch axis."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice on every call
        torch.onnx.export(
            LogitsOnly(model).cpu().eval(), (example[:1],), str(path), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def to_torchscript(model: nn.Module, example: Tensor, path: Path) -> Path:
    traced = torch.jit.trace(LogitsOnly(model).cpu().eval(), example[:2], check_trace=False)
    torch.jit.save(traced, str(path))
    return path
