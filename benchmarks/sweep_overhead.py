"""Sweep overhead: wall time of a sweep of N trials against the sum of its trials' training loops.

    python benchmarks/sweep_overhead.py            # in-process vs 1-worker vs 2-worker group (minutes)
    python benchmarks/sweep_overhead.py --quick    # digits, 2 tiny trials, in-process only
    python benchmarks/sweep_overhead.py --append   # also append the tables to docs/BENCHMARKS.md
    python benchmarks/sweep_overhead.py --views    # augmented sweeps: live teacher vs shared view cache

Each mode runs one real sweep (``orchestrator.sweep.cli.main``: Ray, Tune + Optuna + ASHA, Ray
Train, MLflow on SQLite) with one trial at a time, so the trials' times add up. Storage,
tracking store, caches and Ray's temp dir live in a temporary folder. The teacher is a given
(untrained) checkpoint: teacher training is a one-off per machine, not a per-sweep cost, and
the figures here do not depend on its accuracy.

Where the time goes, per sweep and per trial, is read from three places:

- the sweep's own phases, timed in this process (Ray start/stop, teacher outputs, Tune, final
  evaluation and model registration, report);
- every trial's MLflow child run: its start and end, the timestamps of its per-epoch metrics and
  ``time/epoch_s`` (the training loop alone): start-up (Train worker group or in-process
  launch, data, models, teacher outputs) = first epoch's metrics - run start - first epoch's
  training - one epoch's evaluation/checkpoint/report overhead;
- direct measurements of the pieces of a trial's start-up in this process (a fresh
  interpreter importing the train loop, ``build_data``, ``Learner(...)``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SUB = "  of which "  # a phase inside the one above it (not added again)
PHASE_ORDER: list[str] = []  # the driver's phases in the order they run (filled by phase_timers)

MODES = {
    "in-process": ["train.in_process=true", "train.num_workers=1"],
    "1-worker group": ["train.in_process=false", "train.num_workers=1"],
    "2-worker group": ["train.in_process=false", "train.num_workers=2"],
}
# --views: where the teacher outputs come from (in-process trials; the search only: no confirmation stage)
VIEW_MODES = {
    "plain data, cached outputs": ["data.augment=false"],
    "augmented, live teacher": ["data.augment=true", "teacher.cache_outputs=false"],
    "augmented, shared views": ["data.augment=true"],
}
SEARCH_ONLY = ["train.in_process=true", "train.num_workers=1", "sweep.confirm.top_k=0"]

SPACE = """description: sweep-overhead benchmark (KD or CRD+KD, a few knobs)
params:
  distill.method: {type: categorical, choices: [kd, crd_kd]}
  train.lr: {type: float, low: 0.02, high: 0.1, log: true}
  distill.crd.nce_k: {type: categorical, choices: [%s], when: {distill.method: [crd_kd]}}
"""


def data_overrides(args) -> list[str]:
    if args.dataset == "digits":
        return ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64"]
    return [f"data.dataset={args.dataset}", f"data.train_subset={args.train_subset}"]


def resolve_dataset(args) -> None:
    """Fall back to digits when Fashion-MNIST is not provisioned (``make test`` provisions it)."""
    if args.dataset != "fashion_mnist":
        return
    from orchestrator.config.schema import load_config
    from orchestrator.data import DatasetNotFoundError, build_data

    try:
        build_data(load_config(None, data_overrides(args)).data, 0)
    except DatasetNotFoundError as exc:
        print(f"Fashion-MNIST not found ({exc}); using digits instead", flush=True)
        args.dataset = "digits"


def make_teacher(folder: Path, overrides: list[str]) -> str:
    """An untrained teacher checkpoint of the configured architecture."""
    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.models import build_model
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    cfg = load_config(None, overrides)
    data = build_data(cfg.data, cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model.teacher, data.num_classes, data.in_channels)
    path = folder / "teacher.pt"
    save_model_checkpoint(path, model, cfg.model.teacher, data, {})
    return str(path)


@contextlib.contextmanager
def phase_timers(phases: dict[str, float]):
    """Time the sweep driver's phases by wrapping its methods (in this process only)."""
    import ray

    import orchestrator.data
    from orchestrator.infra import cluster, tracking
    from orchestrator.sweep.confirm import confirm_stage
    from orchestrator.sweep import run
    from orchestrator.sweep.search import search_stage
    from orchestrator import teacher_outputs
    targets = [
        (orchestrator.data, "build_data", "build_data (driver)"),
        (tracking, "check_connection", "MLflow store check (SQLite create/migrate)"),
        (cluster, "connect", "Ray start (ray.init, dashboard)"),
        (run, "ensure_teacher", "teacher checkpoint check"),
        (teacher_outputs, "outputs_for", "teacher outputs (once per sweep; cached across sweeps)"),
        (search_stage, "search", "Tune: all trials"),
        (run.SweepRunner, "_finish", "final: leaderboard, test eval, log + register best student"),
        (run, "evaluate_model", SUB + "test-set evaluations (best student, teacher)"),
        (confirm_stage, "evaluate_model", SUB + "test-set evaluations (best student, teacher)"),
        (tracking, "log_model", SUB + "mlflow.onnx log_model + registration"),
        (run.SweepRunner, "_report", "compare report (tables, plots)"),
        (ray, "shutdown", "Ray stop"),
    ]
    PHASE_ORDER[:] = list(dict.fromkeys(label for _, _, label in targets))
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets if hasattr(owner, attr)]

    def wrap(fn, label):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0
                if label == "Tune: all trials":  # wall-clock ends, to line up with MLflow's timestamps
                    phases["_tune_start_wall"] = time.time() - (time.perf_counter() - t0)
                    phases["_tune_end_wall"] = time.time()
        return timed

    try:
        for owner, attr, label in targets:
            if hasattr(owner, attr):
                setattr(owner, attr, wrap(getattr(owner, attr), label))
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def trial_timings(uri: str, experiment: str) -> list[dict]:
    """Per trial (in start order): wall, training loop, start-up, per-epoch overhead, teardown (seconds)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("orchestrator.kind") == "trial"]
    out = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        rid = run.info.run_id
        epoch_s = sorted(client.get_metric_history(rid, "time/epoch_s"), key=lambda m: m.step)
        stamps = [m.timestamp / 1e3 for m in epoch_s]
        train = [m.value for m in epoch_s]
        start, end = run.info.start_time / 1e3, (run.info.end_time or run.info.start_time) / 1e3
        per_epoch = [stamps[i] - stamps[i - 1] - train[i] for i in range(1, len(stamps))]
        overhead = common.median(per_epoch) if per_epoch else 0.0  # eval + checkpoint + report + MLflow, per epoch
        first = (stamps[0] - start - train[0] - overhead) if stamps else float("nan")
        last = stamps[-1] if stamps else start
        out.append({
            "name": run.info.run_name, "method": run.data.params.get("distill.method", "?"),
            "outcome": run.data.tags.get("orchestrator.outcome", "?"),
            "start": start, "end": end, "last": last, "busy": last - start, "train": sum(train), "epochs": len(train),
            "startup": first, "per_epoch": overhead, "teardown": end - last,
        })
    return out


def run_mode(mode: str, args, folder: Path, teacher: str, space: Path, log) -> dict:
    from orchestrator.sweep.cli import main as sweep_main

    name = f"bench-{mode.replace(' ', '-')}-{int(time.time())}"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    argv = [
        "--name", name, "--num-samples", str(args.num_samples), "--max-concurrent", "1",
        "--storage-path", str(folder / "runs"), "--tracking-uri", uri,
        *data_overrides(args), f"train.epochs={args.epochs}", f"sweep.asha.grace_period={args.epochs}",
        "sweep.baseline=false", f"sweep.search_space={space}", f"teacher.checkpoint={teacher}",
        f"train.torch_threads={args.threads}", *(MODES[mode] if mode in MODES else [*SEARCH_ONLY, *VIEW_MODES[mode]]),
    ]
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    with phase_timers(phases), contextlib.redirect_stdout(log):
        code = sweep_main(argv)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"sweep for mode {mode!r} exited {code}; see {log.name}")
    trials = trial_timings(uri, name)
    return {"mode": mode, "wall": wall, "phases": phases, "trials": trials,
            "tune_start_wall": phases.get("_tune_start_wall"), "tune_end_wall": phases.get("_tune_end_wall")}


def startup_pieces(args, teacher: str, folder: Path) -> common.Table:
    """What a trial's start-up is made of, measured directly (median of a few)."""
    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.data.common import clear_cache
    from orchestrator.run.learner import Learner
    from orchestrator.teacher_outputs import compute_teacher_outputs
    from orchestrator.teacher.checkpoint import load_teacher

    cfg = load_config(None, [*data_overrides(args), "distill.method=crd_kd", "distill.crd.nce_k=256"])
    rows = []
    script = "import time; t = time.perf_counter(); import orchestrator.run.worker; print(time.perf_counter() - t)"
    imports = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        imports.append(float(done.stdout.strip().splitlines()[-1]))
    rows.append(("fresh interpreter: import torch, ray.train, mlflow-free train loop", common.median(imports)))
    cold, warm = [], []
    for _ in range(3):
        clear_cache()
        t0 = time.perf_counter()
        data = build_data(cfg.data, cfg.seed)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        build_data(cfg.data, cfg.seed)
        warm.append(time.perf_counter() - t0)
    rows.append(("build_data, first time in a process (read + decode + split)", common.median(cold)))
    rows.append(("build_data, again in the same process (source cached)", common.median(warm)))
    model = load_teacher(teacher, data.num_classes, data.in_channels, data.image_size)
    outputs = compute_teacher_outputs(model, data.train_eval, cfg.data.eval_batch_size)
    path = folder / "outputs.pt"
    torch.save({"logits": outputs.logits, "embedding": outputs.embedding}, path)
    loads, builds = [], []
    from orchestrator.teacher_outputs import CachedTeacherOutputs

    for _ in range(3):
        t0 = time.perf_counter()
        cached = CachedTeacherOutputs.load(str(path))
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Learner(cfg, data, teacher_outputs=[cached])
        builds.append(time.perf_counter() - t0)
    rows.append(("load the teacher-output cache file", common.median(loads)))
    rows.append(("Learner(...): student, CRD heads + banks, optimiser, loader", common.median(builds)))
    table = common.Table("Pieces of a trial's start-up, measured alone (median)", ["piece", "seconds"])
    for label, secs in rows:
        table.add(label, f"{secs:.2f}")
    return table


def tables_for(results: list[dict], args) -> list[common.Table]:
    summary = common.Table(
        f"Sweep of {args.num_samples} trials x {args.epochs} epoch(s), one at a time ({args.dataset}"
        + (f", {args.train_subset} training images" if args.dataset != "digits" else "") + ")",
        ["mode", "sweep wall s", "Tune phase s", "sum of training loops s", "sweep / training",
         "Tune / training", "fixed cost per trial s", "per-sweep fixed s"],
    )
    detail = common.Table(
        "Per trial (median over the sweep's trials), seconds, from the MLflow child runs",
        ["mode", "Tune start -> 1st trial's run", "run start -> last epoch logged", "training loop",
         "start-up in run", "per-epoch eval+ckpt+report+log", "last epoch -> next trial's run", "last epoch -> Tune end"],
    )
    phases = common.Table("Per-sweep phases (this process), seconds", ["phase", *[r["mode"] for r in results]])
    labels: list[str] = []
    for r in results:
        trials = r["trials"]
        train = sum(t["train"] for t in trials)
        tune = r["phases"].get("Tune: all trials", float("nan"))
        n = max(len(trials), 1)
        fixed_trial = (tune - train) / n
        summary.add(r["mode"], f"{r['wall']:.1f}", f"{tune:.1f}", f"{train:.2f}", common.fmt_ratio(r["wall"] / train),
                    common.fmt_ratio(tune / train), f"{fixed_trial:.1f}", f"{r['wall'] - tune:.1f}")
        # between trials: the finished trial's teardown, Tune's bookkeeping, the next trial's launch
        gaps = [b["start"] - a["last"] for a, b in zip(trials, trials[1:])]
        med = lambda key: common.median([t[key] for t in trials])  # noqa: E731
        tune_start, tune_end = r.get("tune_start_wall"), r.get("tune_end_wall")
        first = f"{trials[0]['start'] - tune_start:.1f}" if trials and tune_start else "-"
        last = f"{tune_end - trials[-1]['last']:.1f}" if trials and tune_end else "-"
        detail.add(r["mode"], first, f"{med('busy'):.1f}", f"{med('train'):.2f}", f"{med('startup'):.1f}",
                   f"{med('per_epoch'):.2f}", f"{common.median(gaps):.1f}" if gaps else "-", last)
        for label in r["phases"]:
            if not label.startswith("_") and label not in labels:
                labels.append(label)
    labels.sort(key=lambda x: PHASE_ORDER.index(x) if x in PHASE_ORDER else len(PHASE_ORDER))
    for label in labels:
        phases.add(label, *[f"{r['phases'].get(label, 0.0):.1f}" for r in results])
    phases.add("other (config, data, MLflow parent run, ...)",
               *[f"{r['wall'] - sum(v for k, v in r['phases'].items() if not k.startswith(('_', SUB))):.1f}"
                 for r in results])
    phases.add("total sweep wall", *[f"{r['wall']:.1f}" for r in results])
    summary.notes += [
        "fixed cost per trial = (Tune phase - sum of training loops) / trials: launching the trial (Tune actor, "
        "Train worker group), start-up, per-epoch evaluation, checkpoint, report and MLflow logging, teardown",
        "per-sweep fixed = sweep wall - Tune phase: Ray start/stop, teacher outputs, final evaluation, "
        "model registration, report",
        common.load_text(),
    ]
    return [summary, detail, phases]


def views_table(results: list[dict], args) -> common.Table:
    """--views: each mode's wall time as a ratio to the un-augmented cached sweep and to the augmented live one."""
    wall = {r["mode"]: r["wall"] for r in results}
    plain, live = wall.get("plain data, cached outputs"), wall.get("augmented, live teacher")
    table = common.Table(
        f"Augmented sweep: live teacher vs shared view cache ({args.num_samples} trials x {args.epochs} epoch(s), "
        f"in-process, one at a time, search only; {args.dataset}"
        + (f", {args.train_subset} training images" if args.dataset != "digits" else "") + ")",
        ["mode", "sweep wall s", "teacher outputs / views s", "Tune phase s", "x plain cached", "x augmented live"])
    for r in results:
        table.add(r["mode"], f"{r['wall']:.1f}",
                  f"{r['phases'].get('teacher outputs (once per sweep; cached across sweeps)', 0.0):.1f}",
                  f"{r['phases'].get('Tune: all trials', float('nan')):.1f}",
                  common.fmt_ratio(r["wall"] / plain) if plain else "-",
                  common.fmt_ratio(r["wall"] / live) if live else "-")
    table.notes.append("teacher outputs / views: computing them before the first trial (the views: every seed x "
                       "epoch x image, one teacher pass each); the live sweep runs the teacher in every trial instead")
    return table


def build_parser():
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=None, choices=[*MODES, *VIEW_MODES], metavar="MODE",
                   help=f"any of {list(MODES)} (default), or with --views of {list(VIEW_MODES)}")
    p.add_argument("--views", action="store_true",
                   help="augmented sweeps: live teacher vs the shared view cache (and plain data, cached outputs)")
    p.add_argument("--num-samples", type=int, default=3, help="trials per sweep")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--no-pieces", action="store_true", help="skip the start-up pieces table")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.set_threads(args.threads)
    if args.modes is None:
        args.modes = list(VIEW_MODES) if args.views else list(MODES)
    if args.quick:
        args.dataset, args.num_samples, args.epochs = "digits", 2, 1
        if not args.views and "--modes" not in (argv or []):
            args.modes = ["in-process"]
    resolve_dataset(args)
    folder = Path(tempfile.mkdtemp(prefix="distill-bench-sweep-"))
    os.environ["DISTILL_CACHE_DIR"] = str(folder / "cache")
    os.environ.setdefault("DISTILL_RAY_TMPDIR", "/tmp/distill-ray-bench")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    space = folder / "space.yaml"
    space.write_text(SPACE % ("64, 256" if args.dataset == "digits" else "256, 1024"))
    overrides = data_overrides(args)
    teacher = make_teacher(folder, overrides)
    t0 = time.perf_counter()
    import orchestrator.sweep.run  # noqa: F401  (ray.tune, mlflow: once per process, kept out of the sweep figures)

    import_s = time.perf_counter() - t0
    log_path = folder / "sweeps.log"
    print(f"working folder {folder}; sweep output goes to {log_path}", flush=True)
    results = []
    with open(log_path, "w") as log:
        for mode in args.modes:
            print(f"mode {mode}: sweep of {args.num_samples} trials ... ({common.load_text()})", flush=True)
            result = run_mode(mode, args, folder, teacher, space, log)
            print(f"  done in {result['wall']:.1f} s", flush=True)
            results.append(result)
    tables = tables_for(results, args)
    if args.views:
        tables.insert(0, views_table(results, args))
    tables[0].notes.append(f"importing orchestrator.sweep.run (ray.tune, optuna, mlflow) took {import_s:.1f} s once in "
                           "this process, before the first sweep; not in the figures above")
    if not args.no_pieces:
        tables.append(startup_pieces(args, teacher, folder))
    for table in tables:
        table.print()
    common.report(tables, append=args.append, title="sweep_overhead.py --views: augmented sweeps, live teacher vs "
                  "shared views" if args.views else "sweep_overhead.py: fixed cost per trial")
    if not args.keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
