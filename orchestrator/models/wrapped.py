"""Wrappers that give other modules the ModelOutput contract or their own input normalisation.

- :class:`OutputAdapter`: a module that returns logits (B, K), or a
  (features, embedding, logits) triple (e.g. a TorchScript file, a plain
  ``mlflow.pytorch`` model), as ``ModelOutput``. With logits only, the
  embedding is the logits (D = K): KD uses them as they are, CRD projects them.
- :class:`Renormalize`: a model that expects inputs normalised with its own
  (mean, std) fed with data normalised with the dataset's, as timm's
  ``DistillationTeacher`` does: ``x' = (x * data_std + data_mean - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from orchestrator.models.base import ModelOutput


def as_model_output(out) -> ModelOutput:
    """``out``: a (B, K) tensor, a ``ModelOutput``-like triple or a dict with ``logits``."""
    if isinstance(out, Tensor):
        return ModelOutput([], out, out)
    if isinstance(out, dict) and "logits" in out:
        return ModelOutput(list(out.get("features", [])), out.get("embedding", out["logits"]), out["logits"])
    if isinstance(out, (tuple, list)) and len(out) == 3 and isinstance(out[2], Tensor):
        return ModelOutput(list(out[0]), out[1], out[2])
    raise TypeError(f"expected logits (B, K), a (features, embedding, logits) triple or a dict; got {type(out).__name__}")


class OutputAdapter(nn.Module):
    """``module(x)`` as ``ModelOutput``; ``embedding_dim`` is measured once on ``probe`` (1, C, H, W)."""

    def __init__(self, module: nn.Module, probe: Tensor) -> None:
        super().__init__()
        self.module = module
        was_training = module.training
        with torch.no_grad():
            self.embedding_dim = int(as_model_output(module.eval()(probe)).embedding.shape[1])
        module.train(was_training)

    def forward(self, x: Tensor) -> ModelOutput:
        return as_model_output(self.module(x))


def _per_channel(values: Sequence[float], channels: int) -> Tensor:
    """(1, C, 1, 1) from per-channel ``values``: one value is broadcast, RGB statistics
    averaged for a one-channel model."""
    t = torch.tensor([float(v) for v in values])
    if t.numel() == 1:
        t = t.expand(channels)
    elif t.numel() != channels:
        if channels != 1:
            raise ValueError(f"{t.numel()} normalisation values for a {channels}-channel input")
        t = t.mean(0, keepdim=True)
    return t.reshape(1, channels, 1, 1).clone()


class Renormalize(nn.Module):
    """Feed ``model`` inputs normalised its own way; see the module docstring. x: (B, C, H, W)."""

    def __init__(self, model: nn.Module, data_mean, data_std, mean, std, channels: int) -> None:
        super().__init__()
        self.model = model
        self.embedding_dim = model.embedding_dim
        self.stage_names = tuple(getattr(model, "stage_names", ()) or ())  # selectors name the wrapped model's stages
        d_mean, d_std = _per_channel(data_mean, channels), _per_channel(data_std, channels)
        m, s = _per_channel(mean, channels), _per_channel(std, channels)
        self.register_buffer("scale", d_std / s, persistent=False)
        self.register_buffer("shift", (d_mean - m) / s, persistent=False)

    def forward(self, x: Tensor) -> ModelOutput:
        return self.model(x * self.scale + self.shift)
