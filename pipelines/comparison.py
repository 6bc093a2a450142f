"""The comparison of the pipeline: accuracy, size and CPU inference time of every model.

Rows: each teacher, the ensemble (mean of the teachers' softmax probabilities),
the student alone, the student distilled from the best single teacher (chosen
on the validation split) and the student distilled from the ensemble. Columns:
test acc1, val acc1, parameters, MACs per image, inference ms per image.

Inference time: the median over ``repeats`` timed batches (after two warm-up
batches; the models interleaved round by round) of ``batch`` test images, in
eval mode without gradients, on the CPU with ``threads`` torch threads; the
ensemble's time is the M teachers run one after the other plus the averaging.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

from orchestrator.models import describe_model

COLUMNS = ["model", "arch", "test_acc1", "val_acc1", "params", "mmacs", "ms_per_image"]


def ensemble_probs(logits: Sequence[Tensor]) -> Tensor:
    """Mean of the members' softmax probabilities, (B, C)."""
    return torch.stack([torch.softmax(x.float(), dim=1) for x in logits]).mean(0)


def accuracy(scores: Tensor, labels: Tensor) -> float:
    return float((scores.argmax(1) == labels).float().mean())


@torch.no_grad()
def ms_per_image(forwards: dict[str, Callable[[Tensor], object]], images: Tensor, repeats: int,
                 threads: int) -> dict[str, float]:
    """Median wall time per image (ms) of each ``forward(images)``.

    Two warm-up passes each, then ``repeats`` interleaved rounds (one timed batch of every
    model per round), so a change in the machine's load hits all models alike.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {name: [] for name in forwards}
    try:
        for forward in forwards.values():
            for _ in range(2):
                forward(images)
        for _ in range(repeats):
            for name, forward in forwards.items():
                start = time.perf_counter()
                forward(images)
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return {name: 1000.0 * statistics.median(t) / images.shape[0] for name, t in times.items()}


def ensemble_forward(models: Sequence[nn.Module]) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        return ensemble_probs([m(x).logits for m in models])

    return forward


def size_of(model: nn.Module, in_channels: int, image_size: int) -> dict[str, int]:
    return describe_model(model, in_channels, image_size)


def build_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame


def format_table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    shown["test_acc1"] = shown["test_acc1"].map(lambda v: f"{100 * v:.2f}%")
    shown["val_acc1"] = shown["val_acc1"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}%")
    shown["params"] = shown["params"].map(lambda v: f"{int(v):,}")
    shown["mmacs"] = shown["mmacs"].map(lambda v: f"{v:.2f}")
    shown["ms_per_image"] = shown["ms_per_image"].map(lambda v: f"{v:.4f}")
    return shown.to_string(index=False)


def to_markdown(frame: pd.DataFrame) -> str:
    head = "| model | arch | test acc1 | val acc1 | params | MMACs/img | ms/img |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for _, r in frame.iterrows():
        val = "" if pd.isna(r["val_acc1"]) else f"{100 * r['val_acc1']:.2f}%"
        lines.append(
            f"| {r['model']} | {r['arch']} | {100 * r['test_acc1']:.2f}% | {val} | {int(r['params']):,} | "
            f"{r['mmacs']:.2f} | {r['ms_per_image']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def bar_chart(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels: test acc1 per model (annotated with parameters) and inference ms per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(frame["model"])
    colours = ["#8da0cb" if n.startswith("teacher") else "#66c2a5" if n == "ensemble" else "#fc8d62" for n in names]
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(names) + 2.0), gridspec_kw={"width_ratios": [3, 2]})
    acc = 100 * frame["test_acc1"]
    left.barh(names, acc, color=colours)
    low = max(0.0, float(acc.min()) - 3.0)
    span = max(float(acc.max()) - low, 1.0)
    left.set_xlim(low, float(acc.max()) + 0.45 * span)  # room for the labels
    for y, (value, params) in enumerate(zip(acc, frame["params"])):
        left.text(value + 0.01 * span, y, f"{value:.2f}%  ({int(params):,} params)", va="center", fontsize=8)
    left.set_xlabel("test acc1 (%)")
    left.invert_yaxis()
    ms = frame["ms_per_image"]
    right.barh(names, ms, color=colours)
    right.set_xlim(0, float(ms.max()) * 1.35)
    right.xaxis.set_major_locator(MaxNLocator(4))
    for y, value in enumerate(ms):
        right.text(value, y, f" {value:.3g}", va="center", fontsize=8)
    right.set_xlabel("CPU inference, ms per image")
    right.set_yticklabels([])
    right.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
