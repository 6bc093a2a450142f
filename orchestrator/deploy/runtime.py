"""Running an exported student: a predictor over its ONNX or TorchScript file, and its latency per image."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def predictor(fmt: str, path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function (B, C, H, W) float32 -> (B, K) logits running the exported file (ONNX with ``threads``
    intra-op threads and one inter-op thread when given; else ONNX Runtime's default)."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def latency_ms(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, repeats: int = 20,
               warmup: int = 10) -> float:
    """Median wall time per image (ms) of ``predict`` on ``batch`` images (tiled from ``images``), over
    ``repeats`` timed calls after ``warmup`` untimed ones."""
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    for _ in range(warmup):  # TorchScript's profiling executor optimises after a few calls
        predict(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch
