"""The model contract and the model registry.

Every model maps images ``x: (B, C, H, W)`` to a :class:`ModelOutput` and
exposes ``embedding_dim`` (the size of ``ModelOutput.embedding``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
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
# name prefix -> module that registers those names when imported: torchvision's models (``tv_``) and timm's
# (``timm:``) cost 2-3 s of imports (torchvision pulls in torch._dynamo), which every trial process would pay
# for models it never builds; they are imported the first time a name with their prefix is asked for
TORCHVISION_PREFIX, TIMM_PREFIX = "tv_", "timm:"
_LAZY: dict[str, str] = {
    TORCHVISION_PREFIX: "orchestrator.models.torchvision_adapter",
    TIMM_PREFIX: "orchestrator.models.timm_adapter",
}


def _import_lazy(name: str | None = None) -> None:
    """Import the modules registering ``name``'s prefix (every lazy module when ``name`` is None)."""
    for prefix, module in list(_LAZY.items()):
        if name is None or name.startswith(prefix):
            _LAZY.pop(prefix, None)
            importlib.import_module(module)


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
    _import_lazy()
    return sorted(_REGISTRY)


def family_prefixes() -> list[str]:
    _import_lazy()
    return sorted(_FAMILIES)


def known_models_text() -> str:
    """What a model name may be, for an error message: every registered name, then each family's form."""
    families = "".join(f", or {p}<name>" for p in family_prefixes())
    return f"a known model: {', '.join(model_names())}{families}"


def split_arch(arch: str) -> tuple[str, dict]:
    """``"cnn_student_small[depth=2,width=0.5]"`` -> ``("cnn_student_small", {"depth": 2, "width": 0.5})``;
    a plain name -> ``(name, {})``. The bracket form is how a checkpoint names a sized architecture."""
    if not arch.endswith("]") or "[" not in arch:
        return arch, {}
    name, _, inner = arch[:-1].partition("[")
    knobs = {}
    for item in filter(None, inner.split(",")):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"architecture '{arch}': expected name[knob=value,...], got '{item}'")
        try:
            knobs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"architecture '{arch}': knob {key.strip()} needs a number, got '{text}'") from None
    return name, knobs


def arch_spec(name: str, knobs: dict) -> str:
    """The one string naming ``name`` built with size ``knobs``: knobs at their default dropped, a float knob
    written as a float, sorted (so equal architectures get equal names); the name alone without knobs."""
    defaults = model_knobs(name)
    kept = {}
    for key, value in knobs.items():
        if isinstance(defaults.get(key), float):
            value = float(value)
        if key not in defaults or value != defaults[key]:
            kept[key] = value
    return name if not kept else f"{name}[{','.join(f'{k}={kept[k]!r}' for k in sorted(kept))}]"


def model_knobs(name: str) -> dict:
    """The size knobs (keyword -> default) a registered model's builder takes, as timm's model args:
    ``cnn_student_small`` -> ``{"width": 1.0, "depth": 1}``; ``{}`` for a family (timm:, tv_) or no knobs."""
    _import_lazy(name)
    factory = _REGISTRY.get(split_arch(name)[0])
    if factory is None:
        return {}
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("num_classes", "in_channels")}


def knob_problem(name: str, knobs: dict) -> str | None:
    """Why ``knobs`` cannot size ``name`` (a knob it does not take), or None."""
    accepted = model_knobs(name)
    unknown = sorted(set(knobs) - set(accepted))
    if not unknown:
        return None
    takes = ", ".join(f"{k} (default {v})" for k, v in accepted.items()) or "no size knobs"
    return f"'{name}' takes {takes}; not {', '.join(unknown)}"


def is_known_model(name: str) -> bool:
    """A registered name (with knobs it takes: ``name[width=0.5]``), or ``<prefix><name>`` of a family that has that name."""
    _import_lazy(name)
    for prefix, exists in _FAMILY_NAMES.items():
        if name.startswith(prefix):
            return exists(name[len(prefix):])
    base, knobs = split_arch(name)
    return base in _REGISTRY and knob_problem(base, knobs) is None


def build_model(name: str, num_classes: int, in_channels: int, **knobs) -> nn.Module:
    """Build a registered model (or one of a family, ``timm:<name>``); an unknown name lists the known ones.

    ``knobs``: size knobs the model's builder takes (:func:`model_knobs`), also given in the name as
    ``name[width=0.5,depth=2]``; one it does not take is a ValueError naming what it takes."""
    _import_lazy(name)
    for prefix, factory in _FAMILIES.items():
        if name.startswith(prefix):
            if knobs:
                raise ValueError(f"'{name}' takes no size knobs; not {', '.join(sorted(knobs))}")
            return factory(name[len(prefix):], num_classes=num_classes, in_channels=in_channels)
    name, named = split_arch(name)
    knobs = {**named, **knobs}
    if name not in _REGISTRY:
        families = "".join(f", {p}<name>" for p in _FAMILIES)
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(model_names())}{families}")
    problem = knob_problem(name, knobs)
    if problem:
        raise ValueError(problem)
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **knobs)


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: eval, no gradients (and none left over from its own training)."""
    model.eval()
    model.requires_grad_(False)
    for p in model.parameters():
        p.grad = None
    return model
