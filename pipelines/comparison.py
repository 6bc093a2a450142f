"""The comparison of the pipeline: accuracy, size and CPU inference time of every model.

Rows: each teacher, the ensemble (mean of the teachers' softmax probabilities),
the student alone, the student distilled from the best single teacher (chosen
on the validation split) and the student distilled from the ensemble. Columns:
test acc1 (a student's: the mean over its ``n`` seeds, ``test_sd`` their sd; a
teacher's or the ensemble's: one trained model, ``n`` = 1), val acc1 (mean),
parameters, MACs per image, inference ms per image, and ``train_s``: the wall
time of one training run (a student's: the mean over its seeds; a teacher's:
its own, blank when given or found cached).

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

COLUMNS = ["model", "arch", "test_acc1", "test_sd", "n", "val_acc1", "params", "mmacs", "ms_per_image", "train_s"]


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


def test_text(row) -> str:
    """``89.67 ± 0.26 (3 seeds)`` for a student, ``89.45 (one model)`` for a teacher or the ensemble (%)."""
    if pd.isna(row["test_sd"]):
        return f"{100 * row['test_acc1']:.2f} (one model)"
    n = int(row["n"])
    return f"{100 * row['test_acc1']:.2f} ± {100 * row['test_sd']:.2f} ({n} seed{'s' if n > 1 else ''})"


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({"model": frame["model"], "arch": frame["arch"]})
    shown["test acc1 %"] = [test_text(r) for _, r in frame.iterrows()]
    shown["val acc1 %"] = frame["val_acc1"].map(lambda v: "" if pd.isna(v) else f"{100 * v:.2f}")
    shown["params"] = frame["params"].map(lambda v: f"{int(v):,}")
    shown["MMACs/img"] = frame["mmacs"].map(lambda v: f"{v:.2f}")
    shown["ms/img"] = frame["ms_per_image"].map(lambda v: f"{v:.4f}")
    shown["train s/run"] = frame["train_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    return shown


def format_table(frame: pd.DataFrame) -> str:
    return _cells(frame).to_string(index=False)


def to_markdown(frame: pd.DataFrame) -> str:
    shown = _cells(frame)
    lines = ["| " + " | ".join(shown.columns) + " |", "|---|---|" + "---:|" * (len(shown.columns) - 2)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def bar_chart(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Two panels: test acc1 per model (annotated with parameters; a student's bar: the mean over its seeds,
    with ± sd as an error bar) and inference ms per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(frame["model"])
    colours = ["#8da0cb" if n.startswith("teacher") else "#66c2a5" if n == "ensemble" else "#fc8d62" for n in names]
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(names) + 2.0), gridspec_kw={"width_ratios": [3, 2]})
    acc = 100 * frame["test_acc1"]
    sd = (100 * frame["test_sd"]).fillna(0.0)
    left.barh(names, acc, color=colours, xerr=sd, capsize=3)
    low = max(0.0, float((acc - sd).min()) - 3.0)
    top = float((acc + sd).max())
    span = max(top - low, 1.0)
    left.set_xlim(low, top + 0.55 * span)  # room for the labels
    for y, (_, row) in enumerate(frame.iterrows()):
        left.text(top + 0.01 * span, y, f"{test_text(row)}  ({int(row['params']):,} params)", va="center", fontsize=8)
    left.set_xlabel("test acc1 (%): students mean ± sd over seeds; teachers, ensemble: one model each")
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
