"""Shared helpers of the benchmark scripts: arguments, interleaved timing, tables,
machine description, synthetic data, and ``--append`` to docs/BENCHMARKS.md.

Every figure the scripts print is meant to be read as a ratio measured within
one run: variants are alternated round by round (the order reversed every
other round, so a drift in machine load hits all of them alike), repeated,
and summarised by their median. The load average is printed with each table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"
RUN_LOG_HEADING = "## Run log (appended by `--append`)"


# ---------------------------------------------------------------- arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every script has: --quick, --append, --repeats, --threads."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds; what the smoke test runs)")
    parser.add_argument("--append", action="store_true", help="append the tables to docs/BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of interleaved measurements (median taken)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 = what a trial with train.cpus_per_worker=1 uses)"
    )
    return parser


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


# ---------------------------------------------------------------- timing


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # not on every platform
        return (float("nan"),) * 3  # type: ignore[return-value]


def load_text(load: Sequence[float] | None = None) -> str:
    one, five, fifteen = load or load_average()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} logical CPUs"


def interleave(
    variants: dict[str, Callable[[], float | None]],
    repeats: int,
    warmup: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Run each variant ``warmup`` times, then ``repeats`` rounds of all of them, alternating order.

    A variant returns the seconds it measured itself, or None (then the call is timed).
    Returns {name: [seconds per round]}.
    """
    names = list(variants)

    def once(name: str) -> float:
        start = time.perf_counter()
        measured = variants[name]()
        return float(measured) if measured is not None else time.perf_counter() - start

    for _ in range(warmup):
        for name in names:
            once(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(once(name))
        if on_round is not None:
            on_round(r)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """Relative half-range of the middle half (a rough noise figure), 0 for < 4 values."""
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    mid = statistics.median(values)
    return (q[2] - q[0]) / 2 / mid if mid else 0.0


def fmt_ratio(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}x"


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return "n/a" if ms != ms else (f"{ms:.1f}" if ms < 100 else f"{ms:.0f}")


def fmt_bytes(n: float) -> str:
    if n != n:
        return "n/a"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}" if abs(n) < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


class Sync:
    """Timing on an accelerator needs a synchronisation before reading the clock."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")

    def __call__(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


# ---------------------------------------------------------------- tables


@dataclass
class Table:
    """A small markdown table (printed as is, appended as is)."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row)]

        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

        out = [f"**{self.title}**", "", line(self.columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(row) for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)

    def print(self) -> None:
        print()
        print(self.markdown(), flush=True)


# ---------------------------------------------------------------- machine, doc


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return fmt_bytes(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return "?"


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return head + ("+local changes" if dirty else "") if head else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_text(device: str = "cpu") -> str:
    import torch

    parts = [
        f"{_cpu_model()}, {os.cpu_count()} logical CPUs, {_memory_total()} RAM",
        f"Python {platform.python_version()}, torch {torch.__version__}",
    ]
    if str(device).startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append(f"commit {_git_commit()}")
    return "; ".join(parts)


def report(tables: Sequence[Table], *, append: bool, title: str, device: str = "cpu", extra: Sequence[str] = ()) -> None:
    """Print the tables (already printed as they came) and, with ``append``, add them to the doc."""
    if not append:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"### {title} ({stamp})",
        "",
        f"- command: `{command_line()}`",
        f"- machine: {machine_text(device)}",
        f"- {load_text()} (at the end of the run)",
        *[f"- {e}" for e in extra],
        "",
    ]
    for table in tables:
        lines += [table.markdown(), ""]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    if RUN_LOG_HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{RUN_LOG_HEADING}\n"
    DOC.write_text(text.rstrip("\n") + "\n" + "\n".join(lines))
    print(f"\nappended to {DOC}", flush=True)


# ---------------------------------------------------------------- synthetic data


class SyntheticImages:
    """A dataset of N random images generated per batch (nothing stored): for memory-bank sizes
    (N = 1.28M) whose images would not fit. Items ``(image, label, index)``, batched via
    ``__getitems__`` like the in-memory datasets."""

    def __init__(self, n: int, channels: int, size: int, num_classes: int, seed: int = 0):
        import torch

        self.n, self.shape = int(n), (channels, size, size)
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, num_classes, (self.n,), generator=gen)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        return torch.randn(self.shape), int(self.labels[i]), int(i)

    def __getitems__(self, positions):
        import torch

        from orchestrator.data.datasets import SampleBatch

        pos = torch.as_tensor(positions, dtype=torch.long)
        return SampleBatch(torch.randn(len(pos), *self.shape), self.labels[pos], pos)


def synthetic_bundle(n: int, channels: int = 1, size: int = 28, num_classes: int = 10, *, materialise: bool = True,
                     n_eval: int = 512, seed: int = 0, augment=None):
    """A :class:`DataBundle` of random images with the shapes of a real dataset.

    ``materialise``: uint8 images held in memory behind the project's own
    ``InMemoryDataset`` (the real batch-gather/normalise path); otherwise
    :class:`SyntheticImages` (nothing stored, any N). ``augment``: a ``CropFlip``
    for the (materialised) train split, whose loader then gives keyed views.
    """
    import torch

    from orchestrator.data.common import ImageSource
    from orchestrator.data.datasets import DataBundle, InMemoryDataset

    gen = torch.Generator().manual_seed(seed)
    mean, std = (0.5,) * channels, (0.25,) * channels
    if materialise:
        total = n + 2 * n_eval
        source = ImageSource(
            name="synthetic",
            images=torch.randint(0, 256, (total, channels, size, size), dtype=torch.uint8, generator=gen),
            labels=torch.randint(0, num_classes, (total,), generator=gen),
            train_pool=torch.arange(n + n_eval),
            test_pool=torch.arange(n + n_eval, total),
            num_classes=num_classes,
        )
        train = InMemoryDataset(source, torch.arange(n), augment=augment, mean=mean, std=std)
        val = InMemoryDataset(source, torch.arange(n, n + n_eval), augment=None, mean=mean, std=std)
        test = InMemoryDataset(source, source.test_pool, augment=None, mean=mean, std=std)
        labels = train.labels.clone()
        train_eval = InMemoryDataset(source, torch.arange(n), augment=None, mean=mean, std=std) if augment else train
    else:
        train = SyntheticImages(n, channels, size, num_classes, seed)
        val = test = SyntheticImages(n_eval, channels, size, num_classes, seed + 1)
        labels = train.labels.clone()
        train_eval = train
    return DataBundle(
        train=train, train_eval=train_eval, val=val, test=test, num_classes=num_classes, in_channels=channels,
        image_size=size, train_labels=labels, name="synthetic", mean=mean, std=std,
    )


def first_batches(dataset, batch_size: int, count: int, seed: int = 0) -> list:
    """``count`` shuffled training batches ``(images, labels, indices)`` from the project's loader."""
    import itertools

    from orchestrator.data import make_loader

    loader = make_loader(dataset, batch_size, shuffle=True, seed=seed)
    return list(itertools.islice(iter(loader), count))
