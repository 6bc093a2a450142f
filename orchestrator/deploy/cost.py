"""What a student costs to deploy: parameters, MACs per image and ONNX Runtime latency, cached on disk.

A cost belongs to an architecture (its name with its size knobs, e.g. ``cnn_student_small[width=0.5]``),
its input (classes, channels, image side) and the thread count, on one machine. Latency is the median
ms/image of the model exported by :func:`orchestrator.deploy.convert.to_onnx` under ONNX Runtime (intra-op
threads ``threads``, one inter-op thread), at batch 1 and batch 64, timed after warm-up calls. The
weights do not change it, so a freshly built model is timed. Each measurement is written as JSON under
``<cache dir>/costs/`` (``DISTILL_CACHE_DIR``) and read back on every later call with the same key, so an
architecture is measured once per machine. Plain PyTorch, onnx and onnxruntime (no Ray, no MLflow).
"""

from __future__ import annotations

import hashlib
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from orchestrator.infra import dry_run
from orchestrator.infra.atomic_files import write_json_atomic
from orchestrator.deploy.convert import to_onnx
from orchestrator.config.cost_metrics import METRICS
from orchestrator.deploy.runtime import latency_ms, predictor
from orchestrator.models import build_model, describe_model

BATCH_REPEATS = {1: 200, 64: 20}  # timed calls per batch size (after WARMUP untimed ones)
WARMUP = 10


def machine() -> str:
    """This machine as a cost is keyed and reported: host, processor."""
    return f"{platform.node()}, {platform.processor() or platform.machine()}"


def cost_key(arch: str, num_classes: int, in_channels: int, image_size: int, threads: int) -> dict:
    """What a cost depends on (the cache key), this machine and its ONNX Runtime included."""
    import onnxruntime

    return {"arch": arch, "num_classes": num_classes, "input_shape": [in_channels, image_size, image_size],
            "threads": threads, "machine": machine(), "onnxruntime": onnxruntime.__version__}


def cache_path(key: dict, cache_dir: Path | None = None) -> Path:
    from orchestrator.infra.cache_dir import default_cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in key["arch"])
    return (cache_dir or default_cache_dir()) / "costs" / f"{name}-{digest}.json"


def measure_cost(arch: str, num_classes: int, in_channels: int, image_size: int, threads: int) -> dict:
    """Measure now: ``params``, ``macs`` (per image), ``latency_ms_b1``, ``latency_ms_b64`` (median
    ms/image under ONNX Runtime with ``threads`` intra-op threads), with the key's fields."""
    model = build_model(arch, num_classes, in_channels).eval()
    return {**cost_key(arch, num_classes, in_channels, image_size, threads),
            **model_cost(model, in_channels, image_size, threads)}


def model_cost(model: torch.nn.Module, in_channels: int, image_size: int, threads: int) -> dict:
    """``params``, ``macs`` and ``latency_ms_b1`` / ``latency_ms_b64`` of a built ``model`` (images
    (B, in_channels, image_size, image_size) -> logits or a ModelOutput; e.g. a given TorchScript teacher),
    measured now, not cached."""
    size = describe_model(model, in_channels, image_size)
    images = np.random.default_rng(0).standard_normal((max(BATCH_REPEATS), in_channels, image_size, image_size))
    images = images.astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="distill-cost-") as tmp:
        path = to_onnx(model, torch.from_numpy(images[:1]), Path(tmp) / "model.onnx")
        predict = predictor("onnx", path, threads=threads)
        latency = {f"latency_ms_b{b}": latency_ms(predict, images, b, repeats, WARMUP)
                   for b, repeats in BATCH_REPEATS.items()}
    return {"params": size["params"], "macs": size["macs"], **latency}


def student_cost(arch: str, num_classes: int, in_channels: int, image_size: int, threads: int,
                 cache_dir: Path | None = None) -> dict:
    """The cost of ``arch`` (see :func:`measure_cost`): read from the disk cache, else measured and cached."""
    path = cache_path(cost_key(arch, num_classes, in_channels, image_size, threads), cache_dir)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a torn or foreign file: measured again and replaced
    cost = measure_cost(arch, num_classes, in_channels, image_size, threads)
    if not dry_run.active():  # a dry run measures and shows, caches nothing
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cost)
    return cost


def cost_metrics(cost: dict) -> dict[str, float]:
    """A cost record as metrics: ``cost/params``, ``cost/macs``, ``cost/latency_ms`` (batch 1),
    ``cost/latency_ms_b64``."""
    return {metric: float(cost[field]) for field, metric in METRICS.items()}


def describe_cost(cost: dict) -> str:
    """One line: params, MACs, latency at both batch sizes, threads and machine."""
    return (f"{cost['arch']}: {cost['params']:,} params, {cost['macs'] / 1e6:.2f} M MACs/image, "
            f"{cost['latency_ms_b1']:.3f} ms/image at batch 1, {cost['latency_ms_b64']:.4f} at batch 64 "
            f"(ONNX Runtime, {cost['threads']} thread{'s' if cost['threads'] != 1 else ''}, {cost['machine']})")
