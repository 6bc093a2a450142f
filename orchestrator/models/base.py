"""The model contract and the model registry.

Every model maps images ``x: (B, C, H, W)`` to a :class:`ModelOutput` and
exposes ``embedding_dim`` (the size of ``ModelOutput.embedding``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    """What every model returns.

    features:  stage outputs, each (B, C_i, H_i, W_i) (FitNet/AT-style losses)
    embedding: (B, D) penultimate vector (CRD's input), D = model.embedding_dim
    logits:    (B, num_classes)
    """

    features: list[Tensor]
    embedding: Tensor
    logits: Tensor


@dataclass(frozen=True)
class Shapes:
    """A model's output sizes: embedding D and, per stage name in order, a feature map's per-sample shape."""

    embedding: int
    stages: dict[str, tuple[int, ...]] = field(default_factory=dict)


def stage_names(model: nn.Module, count: int) -> tuple[str, ...]:
    """The names of a model's ``count`` feature stages: its ``stage_names`` attribute, else stage1..stageN."""
    names = tuple(getattr(model, "stage_names", ()) or ())
    return names if len(names) == count else tuple(f"stage{i + 1}" for i in range(count))


@torch.no_grad()
def probe_shapes(model: nn.Module, in_channels: int, image_size: int, device: torch.device | str = "cpu") -> Shapes:
    """The model's Shapes (embedding D, each stage's per-sample shape by name) from one eval-mode forward
    of a zero image (no BatchNorm statistics change, no random numbers drawn)."""
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    names = stage_names(model, len(out.features))
    return Shapes(int(out.embedding.shape[1]), {n: tuple(f.shape[1:]) for n, f in zip(names, out.features)})


ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
# "<prefix><name>" -> factory(name, num_classes, in_channels): open-ended families such as ``timm:``
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_NAMES: dict[str, Callable[[str], bool]] = {}  # prefix -> does this name exist in the family


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(num_classes, in_channels) -> nn.Module`` under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def register_family(prefix: str, factory: Callable[..., nn.Module], exists: Callable[[str], bool]) -> None:
    """Names ``<prefix><name>`` build ``factory(name, num_classes=..., in_channels=...)`` (e.g. ``timm:``);
    ``exists(name)`` says whether the family has that name (checked up front, before anything is built)."""
    if prefix in _FAMILIES:
        raise ValueError(f"model family '{prefix}' is registered twice")
    _FAMILIES[prefix], _FAMILY_NAMES[prefix] = factory, exists


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def family_prefixes() -> list[str]:
    return sorted(_FAMILIES)


def is_known_model(name: str) -> bool:
    """A registered name, or ``<prefix><name>`` of a family that has that name."""
    for prefix, exists in _FAMILY_NAMES.items():
        if name.startswith(prefix):
            return exists(name[len(prefix):])
    return name in _REGISTRY


def build_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a registered model (or one of a family, ``timm:<name>``); an unknown name lists the known ones."""
    for prefix, factory in _FAMILIES.items():
        if name.startswith(prefix):
            return factory(name[len(prefix):], num_classes=num_classes, in_channels=in_channels)
    if name not in _REGISTRY:
        families = "".join(f", {p}<name>" for p in _FAMILIES)
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(model_names())}{families}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels)
