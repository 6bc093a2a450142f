"""Published pretrained weights of ``tv_<name>`` and ``timm:<name>`` models (``teacher.weights``,
``model.student_weights``).

Names: torchvision ``DEFAULT`` or a member of the model's weights enum (``IMAGENET1K_V1``);
timm ``pretrained`` (its default tag) or a tag (``a1_in1k``). :func:`weights_problem` checks a
name without a download. :func:`build_with_weights` loads the weights (downloaded into the torch
hub / Hugging Face cache the first time), gives the model a fresh classifier for ``num_classes``
and adapts its first convolution to ``in_channels`` (RGB filters summed for one channel). Offline
and not cached, it raises :class:`WeightsUnavailableError` saying how to provide them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from orchestrator.models.base import TIMM_PREFIX, TORCHVISION_PREFIX, build_model

TIMM_DEFAULT = "pretrained"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither in the local cache nor downloadable."""


def _family(arch: str) -> tuple[str, str] | None:
    for prefix in (TORCHVISION_PREFIX, TIMM_PREFIX):
        if arch.startswith(prefix):
            return prefix, arch[len(prefix):]
    return None


def available_weights(arch: str) -> list[str]:
    """The weights names ``arch`` accepts (empty for registry models and models without weights)."""
    family = _family(arch)
    if family is None:
        return []
    prefix, name = family
    if prefix == TIMM_PREFIX:
        import timm

        tags = [full.partition(".")[2] for full in timm.list_pretrained(name) if full.partition(".")[0] == name]
        return [TIMM_DEFAULT, *tags] if tags else []
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        return []
    return ["DEFAULT", *(w.name for w in enum)]


def weights_problem(arch: str, weights: str) -> str | None:
    """What is wrong with asking ``arch`` for ``weights`` (as 'allowed' text for a ConfigError), or None."""
    if _family(arch) is None:
        return f"null: '{arch}' is not a tv_<name> or timm:<name> model, so it has no published weights"
    allowed = available_weights(arch)
    if weights in allowed:
        return None
    return f"one of {allowed} for '{arch}'" if allowed else f"null: '{arch}' has no published weights"


def _torchvision_weights(name: str, weights: str):
    import torchvision

    return torchvision.models.get_model_weights(name)[weights]


def _timm_name(name: str, weights: str) -> str:
    return name if weights == TIMM_DEFAULT else f"{name}.{weights}"


def pretrained_stats(arch: str, weights: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the weights ``weights`` of ``arch`` (default: its default weights) expect; no download."""
    family = _family(arch)
    if family is None:
        raise ValueError(f"'{arch}' has no pretrained configuration (only tv_<name> and timm:<name> do)")
    prefix, name = family
    if prefix == TIMM_PREFIX:
        from orchestrator.models import timm_adapter

        cfg = timm_adapter.create(_timm_name(name, weights or TIMM_DEFAULT), 10, 3).pretrained_cfg
        return tuple(cfg["mean"]), tuple(cfg["std"])
    try:
        transform = _torchvision_weights(name, weights or "DEFAULT").transforms()
    except (ValueError, KeyError) as exc:
        raise ValueError(f"torchvision has no pretrained weights for '{arch}'") from exc
    return tuple(transform.mean), tuple(transform.std)


def _unavailable(arch: str, weights: str, exc: Exception) -> WeightsUnavailableError:
    import huggingface_hub.constants

    torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
    where = torch_cache if arch.startswith(TORCHVISION_PREFIX) else Path(huggingface_hub.constants.HF_HUB_CACHE)
    return WeightsUnavailableError(
        f"the {weights} weights of '{arch}' could not be downloaded ({type(exc).__name__}: {exc}) and are not in the "
        f"local cache {where}. Pre-populate the cache on a machine with network access and copy it here "
        f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')} for torchvision, "
        f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')} for timm), or, for a teacher, give a local "
        f"file instead: teacher.checkpoint=<a state_dict of {arch}> model.teacher={arch} teacher.weights=null"
    )


def build_with_weights(arch: str, num_classes: int, in_channels: int, weights: str | None = None) -> nn.Module:
    """``arch`` for ``num_classes`` x ``in_channels``: random init, or ``weights`` loaded with a fresh classifier."""
    if weights is None:
        return build_model(arch, num_classes, in_channels)
    problem = weights_problem(arch, weights)
    if problem:
        raise ValueError(f"weights '{weights}' for '{arch}': expected {problem}")
    from orchestrator.models import timm_adapter, torchvision_adapter

    prefix, name = _family(arch)
    try:
        if prefix == TIMM_PREFIX:
            net = timm_adapter.timm.create_model(
                _timm_name(name, weights), pretrained=True, num_classes=num_classes, in_chans=in_channels
            )
            return timm_adapter.TimmAdapter(net)
        import torchvision

        net = torchvision.models.get_model(name, weights=_torchvision_weights(name, weights))
    except OSError as exc:  # URLError, connection errors, Hugging Face offline / not cached
        raise _unavailable(arch, weights, exc) from exc
    torchvision_adapter.replace_classifier(net, num_classes)
    return torchvision_adapter.TorchvisionAdapter(name, num_classes, in_channels, net=net)
