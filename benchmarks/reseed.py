"""Does a sweep's result survive a reseed? Re-train its chosen config and the student alone on seeds it never saw.

    python benchmarks/reseed.py runs/fmnist-crd-kd-<time>              # seeds 100, 101, 102
    python benchmarks/reseed.py runs/fmnist-crd-kd-<time> --seeds 7 8 9 10

Reads the sweep folder's ``config.yaml`` (its resolved config) and ``summary.json`` (the chosen config's
sampled values, ``best_params``, and the space's constants, ``space_fixed``), and trains, with the project's plain-PyTorch ``Learner`` and the sweep's
teacher (outputs computed once, as the sweep does), for each seed: the chosen config and the student alone
with the chosen config's optimiser settings. Prints test accuracy mean ± sd, the paired gain with its 95%
interval, and whether the new mean gain lies inside the interval the sweep printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from orchestrator.config.schema import apply_overrides, load_config
from orchestrator.sweep.confirm.outcome import ALONE, optimiser_params
from orchestrator.data import build_data
from orchestrator.distill import registry
from orchestrator.teacher_outputs import CachedTeacherOutputs
from orchestrator.run.epochs import run_epochs
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import teacher_outputs_file
from orchestrator.report.stats import mean_sd, paired_gain
from orchestrator.teacher.checkpoint import load_teacher
from orchestrator.run.alone import ensure_teacher
from orchestrator.infra.tracking import resolve_tracking_uri


def train(cfg, data, outputs, teachers, seed: int) -> float:
    """Test acc1 of one student trained with ``cfg`` and ``seed`` (teacher outputs, or live ``teachers``,
    unless CE only), by the epoch driver a confirmation job runs (with peers: the best network on validation)."""
    cfg = apply_overrides(cfg, {"seed": seed})
    reads = registry.needs_teacher(cfg.distill)
    trainer = Learner(cfg, data, teachers if reads else [], teacher_outputs=outputs if reads else None)
    return run_epochs([trainer], evaluate_test=True)["test/acc1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep's results folder (runs/<name>-<time>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial uses 1)")
    args = parser.parse_args(argv)
    summary = json.loads((args.sweep_dir / "summary.json").read_text())
    used = set(summary.get("seeds", [])) | set(load_config(args.sweep_dir / "config.yaml").sweep.seeds or [])
    if used & set(args.seeds):
        print(f"error: --seeds {sorted(used & set(args.seeds))} were used by the sweep; pick unseen seeds", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    base = load_config(args.sweep_dir / "config.yaml")
    fixed = summary.get("space_fixed", {})
    chosen = apply_overrides(base, {**fixed, **summary["best_params"]})
    alone = apply_overrides(base, {**fixed, **optimiser_params(summary["best_params"]), **ALONE})
    data = build_data(base.data, base.seed)  # the sweep's split
    teacher = base.teacher.checkpoint or ensure_teacher(base, resolve_tracking_uri(base.tracking.uri))
    if base.data.augment:  # views of unseen seeds were never computed: the teacher runs live
        outputs, teachers = None, [load_teacher(teacher, data.num_classes, data.in_channels, data.image_size)]
    else:
        outputs, teachers = [CachedTeacherOutputs.load(teacher_outputs_file(teacher, base, data))], []
    results: dict[str, dict[int, float]] = {"chosen": {}, "alone": {}}
    for seed in args.seeds:
        for name, cfg in (("chosen", chosen), ("alone", alone)):
            start = time.perf_counter()
            results[name][seed] = train(cfg, data, outputs, teachers, seed)
            print(f"{name:<7} seed {seed}: test {100 * results[name][seed]:.2f}% ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    gain = paired_gain(results["chosen"], results["alone"])
    printed = summary.get("gain_vs_alone") or {}
    print(f"\nchosen config ({summary['chosen']}): {_pm(results['chosen'])}; student alone: {_pm(results['alone'])}")
    print(f"gain on seeds {args.seeds}: {gain.text()}")
    if printed.get("low") is not None:
        inside = printed["low"] <= gain.mean <= printed["high"]
        print(f"the sweep printed {100 * printed['mean']:+.2f} [{100 * printed['low']:+.2f}, {100 * printed['high']:+.2f}] "
              f"on seeds {summary['seeds']}: the new mean gain is {'inside' if inside else 'OUTSIDE'} that interval")
    return 0


def _pm(values: dict[int, float]) -> str:
    mean, sd = mean_sd(list(values.values()))
    return f"{100 * mean:.2f} ± {100 * sd:.2f}%"


if __name__ == "__main__":
    sys.exit(main())
