"""A student as an ONNX or TorchScript graph: images (B, C, H, W) -> logits (B, num_classes), free batch size.

``metadata`` (string keys and values) travels inside the file: as ONNX ``metadata_props``, or as the
TorchScript extra file ``metadata.json``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

TORCHSCRIPT_METADATA = "metadata.json"  # the extra file of a TorchScript export holding its metadata


class LogitsOnly(nn.Module):
    """``model(x).logits``: (B, C, H, W) -> (B, num_classes), the graph that is exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits


class Normalized(nn.Module):
    """Raw pixels in [0, 1] (B, C, H, W) -> ``model((x - mean) / std)``, per channel: the data's normalisation
    inside the graph."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor):
        return self.model((x - self.mean) / self.std)


def to_onnx(model: nn.Module, example: Tensor, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """ONNX (TorchScript-based exporter, opset 17) with a dynamic batch axis; ``metadata`` as metadata_props."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice on every call
        torch.onnx.export(
            LogitsOnly(model).cpu().eval(), (example[:1],), str(path), dynamo=False, opset_version=17,
            input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    if metadata:
        import onnx

        graph = onnx.load(str(path))
        onnx.helper.set_model_props(graph, {str(k): str(v) for k, v in metadata.items()})
        onnx.save(graph, str(path))
    return path


def to_torchscript(model: nn.Module, example: Tensor, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Traced TorchScript; ``metadata`` as the extra file ``metadata.json``."""
    traced = torch.jit.trace(LogitsOnly(model).cpu().eval(), example[:2], check_trace=False)
    extra = {TORCHSCRIPT_METADATA: json.dumps(metadata or {}, sort_keys=True)}
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path
