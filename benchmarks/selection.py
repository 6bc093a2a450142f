"""Selection stability: does the sweep pick configs that help, whatever its own seed?

    python benchmarks/selection.py                    # the default sweep with sweep seeds 0, 1, 2 (~30 min here)
    python benchmarks/selection.py --seeds 0 1 2 3    # more sweep seeds
    python benchmarks/selection.py --quick            # digits, tiny models, 2 trials (seconds per sweep)
    python benchmarks/selection.py -- train.epochs=6  # overrides after -- go to every sweep

Each sweep seed runs ``python -m orchestrator.sweep --seed S`` end to end (its own data split, teacher,
Optuna sampler, search seeds [S] and fresh confirmation seeds), in a temporary folder with its own MLflow
store and caches, and reads back its ``summary.json``: the chosen config and its confirmed gains over the
student alone and over the best paper default, each a mean with its paired 95% interval. Prints one row per
sweep seed and writes the table as markdown (``--out``, default: printed only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

QUICK = [  # --quick
    "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
    "teacher.epochs=4", "teacher.lr=0.1", "train.epochs=2", "sweep.num_samples=2", "sweep.confirm.top_k=1",
    "sweep.confirm.seeds=2", f"sweep.search_space={common.REPO / 'tests' / 'data' / 'tiny_space.yaml'}",
]


def run_sweep(seed: int, overrides: list[str], folder: Path, cache: Path | None) -> dict:
    """One sweep in ``folder`` (own store and Ray temp dir; caches in ``cache`` or its own); returns its
    summary.json plus wall time."""
    env = {**os.environ, "DISTILL_CACHE_DIR": str(cache or folder / "cache"),
           "DISTILL_RAY_TMPDIR": str(folder / "ray"), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "orchestrator.sweep", "--seed", str(seed), "--name", f"selection-{seed}",
            "--storage-path", str(folder / "runs"), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", *overrides]
    start = time.perf_counter()
    with open(folder / "sweep.log", "w") as log:
        done = subprocess.run(args, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (folder / "sweep.log").read_text()[-3000:]
        raise RuntimeError(f"sweep seed {seed} exited {done.returncode}:\n{tail}")
    summary = json.loads(next((folder / "runs").glob("selection-*/summary.json")).read_text())
    summary["wall_s"] = time.perf_counter() - start
    return summary


def row(seed: int, s: dict) -> list[str]:
    chosen = next(c for c in s["candidates"] if c["label"] == s["chosen"])
    alone = s["candidates"][s["chosen_alone"]] if s.get("chosen_alone") is not None else None
    return [
        str(seed), s["chosen"], _method(chosen), f"{100 * chosen['test_mean']:.2f} ± {100 * chosen['test_sd']:.2f}",
        f"{100 * alone['test_mean']:.2f} ± {100 * alone['test_sd']:.2f}" if alone else "-",
        _gain(s["gain_vs_alone"]), _gain(s["gain_vs_paper_default"]) if s["gain_vs_paper_default"] else "(is the paper default)",
        f"{s['wall_s'] / 60:.1f}",
    ]


def _method(c: dict) -> str:
    return str(c["params"].get("distill.method", "(fixed)"))


def _gain(g: dict | None) -> str:
    if g is None:
        return "-"
    if g["low"] is None:
        return f"{100 * g['mean']:+.2f} (no interval)"
    return f"{100 * g['mean']:+.2f} [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}]" + (" *" if g["significant"] else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sweep seeds (--seed of each sweep)")
    parser.add_argument("--quick", action="store_true", help="digits, tiny models, 2 trials (seconds per sweep)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--cache-dir", type=Path,
                        help="share teachers and teacher outputs (each keyed by its seed) across runs of this script "
                             "(default: a fresh cache per sweep, so each sweep trains its teacher)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every sweep (after --)")
    args = parser.parse_args(argv)
    overrides = (QUICK if args.quick else []) + args.overrides
    table = common.Table(
        "Selection stability: the default sweep at several sweep seeds (confirmed on fresh seeds)",
        ["sweep seed", "chosen", "method", "chosen test %", "alone test %", "gain vs alone [95% CI]",
         "gain vs best paper default [95% CI]", "minutes"],
    )
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix=f"selection-{seed}-") as tmp:
            print(f"sweep seed {seed} ...", flush=True)
            summary = run_sweep(seed, overrides, Path(tmp), args.cache_dir)
        table.add(*row(seed, summary))
        print(" | ".join(table.rows[-1]), flush=True)
    table.notes += [
        "each row: one `python -m orchestrator.sweep --seed S` (own split, teacher, sampler, search seeds [S]); "
        "test % = mean ± sd over its confirmation seeds; gains are paired by seed, * = interval excludes 0",
        f"command: `{common.command_line()}`; overrides: {overrides or 'none'}",
        f"machine: {common.machine_text()}; {common.load_text()} at the end; "
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    text = table.markdown()
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
