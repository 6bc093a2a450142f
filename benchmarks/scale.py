"""The driver at scale: a sweep of N trials that train almost nothing, and what grows with N.

    python benchmarks/scale.py                      # 1,000 trials (about 40 min on 2 loaded cores)
    python benchmarks/scale.py --num-samples 100    # a short look
    python benchmarks/scale.py --quick              # 5 trials (the smoke test)
    python benchmarks/scale.py --append             # also append the tables to docs/BENCHMARKS.md

One real sweep (``orchestrator.sweep.cli.main`` in this process: Ray, Tune + Optuna TPE + ASHA, Ray Train
in-process trials, MLflow on SQLite) over the ``kd`` search space, one trial at a time, each trial a tiny
student on a handful of digits images for 1 epoch: what is left of a trial's wall time is the fixed cost
of the sweep machinery. The teacher is an untrained checkpoint (its accuracy does not matter here).

Measured, in the first and the last tenth of the trials (trials 2-100 and 901-1,000 at N = 1,000; trial 1
also starts the trial actor, a one-off, reported alone):

- wall time per finished trial (between consecutive trial completions, as the driver sees them);
- of which: time inside the trial's MLflow child run (in the trial's actor: data, models, 1 epoch,
  evaluation, checkpoint, logging), and the driver's pieces timed in this process by wrapping them:
  Tune's experiment-state saves (before each new trial, and Tune's own after trial checkpoints), Optuna's
  suggest (TPE) and tell, ASHA, the progress lines; the rest is Tune's event loop, actor reuse and the trial
  function's set-up before its run;
- the driver's RSS (and the Ray processes' RSS) at each tenth of the trials;
- at the end: the size of the MLflow store, the Optuna journal and the sweep folder, the time of one
  lookup of a trial's own MLflow run among all the sweep's children, and of ``python -m orchestrator.compare``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import sweep_overhead  # noqa: E402

OVERRIDES = [
    "data.dataset=digits", "data.train_subset=64", "data.batch_size=32", "model.teacher=tiny_teacher",
    "model.student=tiny_student", "train.epochs=1", "sweep.asha.grace_period=1", "train.in_process=true",
    "train.num_workers=1", "sweep.baseline=false", "sweep.confirm.top_k=0", "sweep.search_space=kd",
]


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def ray_rss_bytes() -> int:
    """RSS of this process's child processes (Ray's GCS, raylet, the trial actors, ...), summed."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


class Recorder:
    """Trial completions (time, RSS) and the durations of the wrapped driver pieces, as they happen."""

    def __init__(self, total: int):
        self.total = total
        self.done: list[float] = []  # wall clock of each trial's completion, in order
        self.rss: list[tuple[int, int, int]] = []  # (trials done, driver RSS, Ray processes' RSS)
        self.calls: dict[str, list[tuple[float, float]]] = {}  # piece -> [(end wall clock, seconds)]
        self.lock = threading.Lock()

    def completed(self) -> None:
        self.done.append(time.time())
        n = len(self.done)
        if n == 1 or n % max(1, self.total // 10) == 0 or n == self.total:
            self.rss.append((n, rss_bytes(), ray_rss_bytes()))

    def timed(self, label: str, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                with self.lock:
                    self.calls.setdefault(label, []).append((time.time(), time.perf_counter() - t0))
        return wrapper


PIECES = {  # label -> (module, owner attribute path, method)
    "Tune experiment-state saves": ("ray.tune.execution.tune_controller", "TuneController", "checkpoint"),
    "Optuna suggest (TPE)": ("orchestrator.infra.ray_compat", "JournalSearch", "suggest"),
    "Optuna tell": ("ray.tune.search.optuna", "OptunaSearch", "on_trial_complete"),
    "ASHA decision": ("orchestrator.sweep.search.search_stage", "PaperDefaultsFinish", "on_trial_result"),
    "progress lines": ("orchestrator.sweep.progress", "ProgressPrinter", "on_trial_result"),
}


@contextlib.contextmanager
def instrumented(rec: Recorder):
    """Wrap the driver's pieces (class attributes, this process) and count trial completions."""
    import importlib

    from orchestrator.sweep.progress import ProgressPrinter

    saved = []
    for label, (module, owner, attr) in PIECES.items():
        cls = getattr(importlib.import_module(module), owner)
        saved.append((cls, attr, cls.__dict__.get(attr)))
        setattr(cls, attr, rec.timed(label, getattr(cls, attr)))
    for attr in ("on_trial_complete", "on_trial_error"):
        original = ProgressPrinter.__dict__[attr]
        saved.append((ProgressPrinter, attr, original))

        def counted(self, *a, _original=original, **kw):
            _original(self, *a, **kw)
            rec.completed()
        setattr(ProgressPrinter, attr, counted)
    try:
        yield
    finally:
        for cls, attr, fn in reversed(saved):
            if fn is None:
                delattr(cls, attr)
            else:
                setattr(cls, attr, fn)


def child_run_spans(uri: str, experiment: str) -> list[tuple[float, float]]:
    """(start, end) wall clock of every trial's MLflow child run, in start order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`orchestrator.kind` = 'trial'", max_results=1000,
                                  page_token=token)
        runs += [(r.info.start_time / 1e3, (r.info.end_time or r.info.start_time) / 1e3) for r in page]
        token = page.token
        if not token:
            return sorted(runs)


def own_run_lookup_s(uri: str, experiment: str) -> tuple[float, float, int]:
    """Seconds of the lookup a trial makes of its own MLflow run when it starts (``trial._own_run``) with
    every child of the sweep in the store, the same by reading every child and picking one (what it did
    before), and how many children there are."""
    from mlflow.tracking import MlflowClient

    from orchestrator.infra.tracking import PARENT, child_runs
    from orchestrator.sweep.trial import TrialContext, _own_run

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parent = client.search_runs([exp.experiment_id], "tags.`orchestrator.kind` = 'sweep'")[0].info.run_id
    children = child_runs(client, exp.experiment_id, parent)
    last = max(children, key=lambda r: r.info.start_time)
    ctx = TrialContext(base={}, teachers=[], teacher_outputs=[], storage_path="", tracking_uri=uri,
                       experiment_id=exp.experiment_id, parent_run_id=parent)
    trial_id = last.data.tags["trial_id"]
    variants = {
        "filtered": lambda: _own_run(client, ctx, trial_id),
        "read all": lambda: next(r for r in child_runs(client, exp.experiment_id, parent)
                                 if r.data.tags.get("trial_id") == trial_id),
    }
    hits: dict = {}

    def timed(name: str):
        def once() -> None:
            hits[name] = variants[name]()
        return once

    times = common.interleave({name: timed(name) for name in variants}, repeats=3)
    assert all(r.info.run_id == last.info.run_id for r in hits.values()) and last.data.tags.get(PARENT) == parent
    return common.median(times["filtered"]), common.median(times["read all"]), len(children)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def window(rec: Recorder, spans: list[tuple[float, float]], tune_start: float, first: int, last: int) -> dict:
    """Figures for trials ``first``..``last`` (1-based, by completion): wall per trial and its pieces."""
    t_from = rec.done[first - 2] if first > 1 else tune_start
    t_to = rec.done[last - 1]
    n = last - first + 1
    out = {"trials": f"{first}-{last}", "wall_per_trial_s": (t_to - t_from) / n}
    in_run = sum(max(0.0, min(e, t_to) - max(s, t_from)) for s, e in spans)
    out["in_trial_run_s"] = in_run / n
    pieces = 0.0
    for label in PIECES:
        secs = sum(d for end, d in rec.calls.get(label, []) if t_from < end <= t_to)
        out[label] = secs / n
        pieces += secs / n
    out["other_s"] = out["wall_per_trial_s"] - out["in_trial_run_s"] - pieces
    return out


def run_sweep(args, folder: Path) -> dict:
    from orchestrator.sweep.cli import main as sweep_main
    from orchestrator.sweep.folder import OPTUNA_JOURNAL

    teacher = sweep_overhead.make_teacher(folder, OVERRIDES)
    name = f"scale-{args.num_samples}-{int(time.time())}"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [
        "--name", name, "--num-samples", str(args.num_samples), "--max-concurrent", "1",
        "--storage-path", str(folder / "runs"), "--tracking-uri", uri, *OVERRIDES,
        f"teacher.checkpoint={teacher}", f"train.torch_threads={args.threads}",
    ]
    rec = Recorder(args.num_samples)
    phases: dict[str, float] = {}
    log_path = folder / "sweep.log"
    print(f"sweep of {args.num_samples} trials; its output goes to {log_path} ({common.load_text()})", flush=True)
    rss_start = rss_bytes()
    t0 = time.perf_counter()
    with open(log_path, "w") as log, instrumented(rec), sweep_overhead.phase_timers(phases), \
            contextlib.redirect_stdout(log):
        code = sweep_main(argv)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"the sweep exited {code}; see {log_path}")
    if len(rec.done) != args.num_samples:
        raise RuntimeError(f"{len(rec.done)} trial completions seen, {args.num_samples} expected; see {log_path}")
    spans = child_run_spans(uri, name)
    tenth = max(1, args.num_samples // 10)
    windows = [window(rec, spans, phases["_tune_start_wall"], 2, max(2, tenth)),
               window(rec, spans, phases["_tune_start_wall"], args.num_samples - tenth + 1, args.num_samples)]
    exp_dir = Path((folder / "runs" / f"{name}.latest").read_text().strip())
    lookup_s, read_all_s, children = own_run_lookup_s(uri, name)
    t1 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.compare", "--experiment", name, "--tracking-uri", uri,
                           "--out", str(folder / "compare")], capture_output=True, text=True, timeout=3600)
    compare_s = time.perf_counter() - t1
    if done.returncode != 0:
        raise RuntimeError(f"orchestrator.compare exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        "num_samples": args.num_samples, "wall_s": wall, "windows": windows,
        "phases": {k: v for k, v in phases.items() if not k.startswith("_")},
        "rss": [{"trials": n, "driver_bytes": d, "ray_bytes": r} for n, d, r in rec.rss],
        "rss_before_sweep_bytes": rss_start,
        "mlflow_db_bytes": sum(folder_bytes(p) if p.is_dir() else p.stat().st_size
                               for p in folder.glob("mlflow.db*")),
        "mlflow_artifacts_bytes": folder_bytes(folder / "mlruns") + folder_bytes(folder / "mlartifacts"),
        "journal_bytes": (exp_dir / OPTUNA_JOURNAL).stat().st_size,
        "sweep_folder_bytes": folder_bytes(exp_dir),
        "own_run_lookup_s": lookup_s, "own_run_read_all_s": read_all_s, "child_runs": children, "compare_s": compare_s,
        "load": common.load_text(),
        "first_trial_s": rec.done[0] - phases["_tune_start_wall"],
        "raw": {"tune_start": phases["_tune_start_wall"], "completions": rec.done, "run_spans": spans,
                "calls": rec.calls},
    }


def tables_for(res: dict) -> list[common.Table]:
    first, last = res["windows"]
    growth = common.Table(
        f"Driver overhead per trial, first vs last tenth of a {res['num_samples']}-trial sweep (seconds per "
        "finished trial; one trial at a time, each 1 epoch on 64 digits images, in-process)",
        ["", f"trials {first['trials']}", f"trials {last['trials']}", "last / first"])
    rows = [("wall per finished trial", "wall_per_trial_s"), ("  in the trial's MLflow run (actor)", "in_trial_run_s"),
            *[(f"  {label}", label) for label in PIECES], ("  other (Tune loop, actor reuse, trial set-up)", "other_s")]
    for label, key in rows:
        a, b = first[key], last[key]
        growth.add(label, f"{a:.3f}", f"{b:.3f}", common.fmt_ratio(b / a) if a > 1e-4 else "-")
    growth.notes += [
        f"trial 1 ({res['first_trial_s']:.1f} s: the trial actor's start, its imports) is left out of the first tenth",
        f"a trial's lookup of its own MLflow run among all {res['child_runs']} children of the sweep (at the end): "
        f"{res['own_run_lookup_s']:.3f} s by a store filter on its trial id, {res['own_run_read_all_s']:.3f} s by "
        "reading every child (before); it runs before the trial's run starts, so it is in 'other'",
        f"whole sweep {res['wall_s']:.0f} s; {res['load']} (at the end)",
    ]
    sizes = common.Table("Stores, memory and the report after the sweep", ["what", "size / time"])
    sizes.add("MLflow store (SQLite file)", common.fmt_bytes(res["mlflow_db_bytes"]))
    sizes.add("MLflow artifacts", common.fmt_bytes(res["mlflow_artifacts_bytes"]))
    sizes.add("Optuna journal", common.fmt_bytes(res["journal_bytes"]))
    sizes.add("sweep folder (Tune state, trial folders, checkpoints, journal)",
              common.fmt_bytes(res["sweep_folder_bytes"]))
    sizes.add("driver RSS before the sweep", common.fmt_bytes(res["rss_before_sweep_bytes"]))
    for row in res["rss"]:
        sizes.add(f"driver RSS / Ray processes' RSS after {row['trials']} trials",
                  f"{common.fmt_bytes(row['driver_bytes'])} / {common.fmt_bytes(row['ray_bytes'])}")
    for label in ("final: leaderboard, test eval, log + register best student", "compare report (tables, plots)"):
        if label in res["phases"]:
            sizes.add(f"sweep end: {label} s", f"{res['phases'][label]:.1f}")
    sizes.add("`python -m orchestrator.compare` on the sweep, s", f"{res['compare_s']:.1f}")
    return [growth, sizes]


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=1000, help="trials in the sweep")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.num_samples = 5
    if args.num_samples < 2:
        print(f"error: --num-samples must be an integer >= 2, got {args.num_samples}", file=sys.stderr)
        return 2
    common.set_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="distill-bench-scale-"))
    os.environ["DISTILL_CACHE_DIR"] = str(folder / "cache")
    os.environ.setdefault("DISTILL_RAY_TMPDIR", "/tmp/distill-ray-bench")
    print(f"working folder {folder}", flush=True)
    import orchestrator.sweep.run  # noqa: F401  (ray.tune, optuna, mlflow: imported before the sweep's clock)

    cwd = os.getcwd()
    os.chdir(folder)  # MLflow's default artifact root (./mlruns) lands in the folder measured
    try:
        res = run_sweep(args, folder)
    finally:
        os.chdir(cwd)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    tables = tables_for(res)
    for table in tables:
        table.print()
    common.report(tables, append=args.append, title=f"scale.py: the driver at {args.num_samples} trials")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
