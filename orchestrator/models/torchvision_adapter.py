"""torchvision classification models behind the ModelOutput contract.

``tv_<name>`` builds ``torchvision.models.get_model(name, weights=None,
num_classes=...)`` (random init, never a download) and wraps it:

- ``in_channels``: the first convolution is replaced by one with
  ``in_channels`` inputs (same kernel, stride, padding, groups, bias);
- ``embedding``: the input of the final ``nn.Linear`` classifier (taken before
  a dropout that directly precedes it; the dropout is still applied to the
  logits' input in training); ``embedding_dim`` = that layer's ``in_features``;
- ``features``: the output of the last top-level (or second-level) module at
  each spatial resolution, e.g. resnet ``relu, layer1..layer4``, mobilenet
  ``features.1, features.3, ...``. They are found once per architecture by a
  shape probe (one 64x64 image, no grad) and returned by
  ``torchvision.models.feature_extraction.create_feature_extractor`` (an FX
  graph: no hooks, no per-call state).

Registered: every classification model of ``torchvision.models`` that takes
an image of any size >= 8x8 and ends in a linear classifier. Left out, with
the reason, in ``EXCLUDED``; :func:`torchvision_model` still builds most of
those for larger inputs. torchvision's ImageNet stems down-sample 4-32x, so on
28x28 or 32x32 images these are baselines, not tuned CIFAR models.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor

from orchestrator.models.base import TORCHVISION_PREFIX as PREFIX
from orchestrator.models.base import ModelOutput, register_model

# name prefix -> why it is not registered (checked by a one-off probe of every
# torchvision classification model at 8x8, 28x28 and 32x32 inputs).
EXCLUDED: dict[str, str] = {
    "vit_": "needs the fixed image size it was built for",
    "swin": "features are channels-last (B, H, W, C) token maps",
    "maxvit": "needs an image size divisible by its window sizes (>= 224 by default)",
    "inception_v3": "needs inputs of at least 75x75",
    "squeezenet": "ends in a 1x1 conv classifier, no linear layer to take the embedding from",
    "alexnet": "fails below about 63x63 (11x11 stride-4 stem, then 3 max-pools)",
    "vgg": "five 2x max-pools: fails below 32x32",
    "convnext": "4x stem and three 2x2 down-samplings: fails below 32x32",
    "densenet": "2x2 average pools in its transitions: fails below 32x32",
    "googlenet": "fails at 8x8 (its 4 max-pools run out of pixels)",
}
# Extra constructor arguments for models whose defaults do not fit the contract.
_EXTRA_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
}
_PROBE_SIZE = 64


def _excluded(name: str) -> str | None:
    for prefix, reason in EXCLUDED.items():
        if name.startswith(prefix):
            return reason
    return None


def construct(name: str, num_classes: int) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **_EXTRA_KWARGS.get(name, {}))


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, module)


def first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    """Path and module of the first ``nn.Conv2d`` of ``net``."""
    for path, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return path, module
    raise ValueError("no Conv2d found to adapt to in_channels")


def replace_first_conv(net: nn.Module, in_channels: int, keep_weights: bool = False) -> None:
    """Give the first convolution ``in_channels`` inputs (same kernel, stride, padding, groups, bias).
    ``keep_weights``: carry trained weights over (RGB filters summed for one channel, as timm's
    ``adapt_input_conv``); otherwise the new layer is freshly initialised."""
    path, module = first_conv(net)
    if module.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        module.groups,
        module.bias is not None,
        module.padding_mode,
    )
    if keep_weights:
        from timm.models import adapt_input_conv

        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_channels, module.weight, base_chans=module.in_channels))
            if module.bias is not None:
                new.bias.copy_(module.bias)
    _set_module(net, path, new)


def replace_classifier(net: nn.Module, num_classes: int) -> None:
    """Give the final ``nn.Linear`` of ``net`` ``num_classes`` outputs (freshly initialised) if it has other."""
    path, linear = [(p, m) for p, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    if linear.out_features != num_classes:
        _set_module(net, path, nn.Linear(linear.in_features, num_classes, bias=linear.bias is not None))


def _split_head(net: nn.Module) -> tuple[str, nn.Linear, nn.Module]:
    """Cut the final Linear (and a Dropout right before it) out of ``net``.

    Returns the path of the (now Identity) classifier, the Linear and the
    dropout (Identity when there was none).
    """
    linears = [(path, m) for path, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model has no nn.Linear classifier")
    path, linear = linears[-1]
    _set_module(net, path, nn.Identity())
    dropout: nn.Module = nn.Identity()
    parent_path, _, attr = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    if isinstance(parent, nn.Sequential) and attr.isdigit() and int(attr) > 0:
        previous = parent[int(attr) - 1]
        if isinstance(previous, nn.Dropout):
            dropout = previous
            parent[int(attr) - 1] = nn.Identity()
    return path, linear, dropout


_STAGE_NODES: dict[str, tuple[str, ...]] = {}


def _stage_nodes(name: str, net: nn.Module, in_channels: int) -> tuple[str, ...]:
    """Module paths of the stage outputs of ``net`` (head already cut off):
    the last depth-1/2 module at each spatial resolution, found once per
    architecture by a no-grad forward pass of one 64x64 image (stage outputs
    of every registered model are still >= 2x2 there)."""
    if name in _STAGE_NODES:
        return _STAGE_NODES[name]
    skip = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Flatten, nn.Dropout, nn.Linear)
    candidates = []
    for top_name, top in net.named_children():
        candidates.append((top_name, top))
        candidates.extend((f"{top_name}.{n}", m) for n, m in top.named_children())
    recorded: list[tuple[str, tuple[int, ...]]] = []

    def make_hook(path: str):
        def hook(_module, _inputs, out):
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
                recorded.append((path, tuple(out.shape[-2:])))

        return hook

    handles = [m.register_forward_hook(make_hook(p)) for p, m in candidates if not isinstance(m, skip)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    nodes = tuple(p for i, (p, size) in enumerate(recorded) if i + 1 == len(recorded) or recorded[i + 1][1] != size)
    if not nodes:
        raise ValueError(f"found no stage outputs in torchvision model '{name}'")
    _STAGE_NODES[name] = nodes
    return nodes


class TorchvisionAdapter(nn.Module):
    """A torchvision classifier returning ``ModelOutput``; see the module docstring."""

    def __init__(self, name: str, num_classes: int, in_channels: int, net: nn.Module | None = None) -> None:
        """``net``: an already built (e.g. trained) ``torchvision.models`` classifier of ``name``."""
        super().__init__()
        trained = net is not None
        if net is None:
            net = construct(name, num_classes)
        replace_first_conv(net, in_channels, keep_weights=trained)
        head_path, linear, dropout = _split_head(net)
        nodes = _stage_nodes(name, net, in_channels)
        return_nodes = {node: f"f{i}" for i, node in enumerate(nodes)}
        return_nodes[head_path] = "embedding"
        self.name = name
        self.body = create_feature_extractor(net, return_nodes=return_nodes)
        self.dropout = dropout
        self.fc = linear
        self.embedding_dim = linear.in_features
        self._feature_keys = [f"f{i}" for i in range(len(nodes))]

    def forward(self, x: Tensor) -> ModelOutput:
        out = self.body(x)
        embedding = out["embedding"].flatten(1)
        logits = self.fc(self.dropout(embedding))
        return ModelOutput([out[k] for k in self._feature_keys], embedding, logits)


def torchvision_model(name: str, num_classes: int, in_channels: int) -> TorchvisionAdapter:
    """Wrap any torchvision classification model by its torchvision name
    (``resnet18``), registered or not (unregistered ones have input-size limits)."""
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(f"unknown torchvision classification model '{name}'; known: {', '.join(known)}")
    return TorchvisionAdapter(name, num_classes, in_channels)


def registered_torchvision_names() -> list[str]:
    return [n for n in torchvision.models.list_models(module=torchvision.models) if _excluded(n) is None]


def _register(name: str) -> None:
    def factory(num_classes: int, in_channels: int) -> TorchvisionAdapter:
        return TorchvisionAdapter(name, num_classes, in_channels)

    factory.__name__ = PREFIX + name
    register_model(PREFIX + name)(factory)


for _name in registered_torchvision_names():
    _register(_name)
