"""Users' own weights: a plain ``state_dict`` loaded into a registry, ``tv_<name>`` or ``timm:<name>``
model.

A torchvision or timm ``state_dict`` has the framework's own key names
(``conv1.weight``, ``fc.weight``); it is loaded into the bare framework model,
whose first convolution is then adapted to the data's channels (RGB filters
summed for one channel), and the model is wrapped in its adapter. A
``state_dict`` of this tool's own model (adapter keys) loads as it is.
"""

from __future__ import annotations

from torch import Tensor, nn

from orchestrator.models.base import TIMM_PREFIX, TORCHVISION_PREFIX, build_model

SHOWN = 5  # keys listed per kind of mismatch


def mismatch(model: nn.Module, state_dict: dict[str, Tensor]) -> str | None:
    """What keeps ``state_dict`` from loading strictly into ``model`` (first few keys), or None."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    parts = [
        f"{label} ({len(keys)}): {', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes))
        if keys
    ]
    return "; ".join(parts) or None


def _load(model: nn.Module, state_dict: dict[str, Tensor], arch: str) -> nn.Module:
    problem = mismatch(model, state_dict)
    if problem:
        raise ValueError(f"the state_dict does not fit model '{arch}': {problem}")
    model.load_state_dict(state_dict)
    return model


def _channels(state_dict: dict[str, Tensor], key: str, default: int) -> int:
    weight = state_dict.get(key)
    return int(weight.shape[1]) if weight is not None and weight.dim() == 4 else default


def load_weights(arch: str, state_dict: dict[str, Tensor], num_classes: int, in_channels: int) -> nn.Module:
    """``arch`` built for ``num_classes`` x ``in_channels`` with ``state_dict`` loaded (strict).

    Raises ValueError naming the first missing/unexpected/mis-shaped keys.
    """
    model = build_model(arch, num_classes, in_channels)
    if set(state_dict) == set(model.state_dict()) or not arch.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
        return _load(model, state_dict, arch)
    from orchestrator.models import timm_adapter, torchvision_adapter  # imported by build_model above

    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX):]
        probe = timm_adapter.create(name, num_classes, 3)
        conv_key = probe.pretrained_cfg.get("first_conv", "conv1") + ".weight"
        net = timm_adapter.create(name, num_classes, _channels(state_dict, conv_key, 3))
        _load(net, state_dict, arch)
        torchvision_adapter.replace_first_conv(net, in_channels, keep_weights=True)
        return timm_adapter.TimmAdapter(net)
    name = arch[len(TORCHVISION_PREFIX):]
    net = torchvision_adapter.construct(name, num_classes)
    path, conv = torchvision_adapter.first_conv(net)
    torchvision_adapter.replace_first_conv(net, _channels(state_dict, f"{path}.weight", conv.in_channels))
    _load(net, state_dict, arch)
    return torchvision_adapter.TorchvisionAdapter(name, num_classes, in_channels, net=net)

