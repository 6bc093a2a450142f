"""The model contract and the model registry.

Every model maps images ``x: (B, C, H, W)`` to a :class:`ModelOutput` and
exposes ``embedding_dim`` (the size of ``ModelOutput.embedding``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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
