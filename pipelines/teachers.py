"""``python -m pipelines.teachers``: train (or take) the M teachers of an ensemble.

Every teacher to train is one Ray Train ``TorchTrainer`` run launched from its own
Ray task (``num_cpus=1``), so M teachers train concurrently on the cluster's
CPUs. With one CPU worker (the default) Train runs the loop in-process inside the
task (``ScalingConfig(num_workers=0)``, no worker group, no start-up cost);
``train.num_workers > 1`` or ``train.use_gpu=true`` gives each teacher a DDP
worker group instead. Each teacher is an MLflow run with tag
``orchestrator.kind=teacher`` (params, metrics per epoch, the checkpoint file
and the same file as ``teacher/checkpoint.pt``, so ``runs:/<id>/teacher`` loads it without unpickling code).

Finished teachers are cached under ``<cache>/teachers`` by a hash of what
changes them (:func:`orchestrator.run.alone.training_key`, the same cache as the
sweep's default teacher), so a rerun reuses them. Teachers given as a checkpoint
path or an MLflow model URI (``runs:/...``, ``models:/...``) are checked and used
as they are; a plain state_dict is imported as its ``arch`` the way the sweep imports
``teacher.checkpoint`` (:func:`orchestrator.teacher.checkpoint.import_teacher`).

Examples::

    python -m pipelines.teachers                                  # the 3 default Fashion-MNIST teachers
    python -m pipelines.teachers "pipeline.teachers=[cnn_teacher:0, cnn_teacher:1]" teacher.epochs=4
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

import ray
import torch

from orchestrator.infra import tracking
from orchestrator.config.schema import (
    NATIVE_SIZES,
    Config,
    ConfigError,
    apply_overrides,
    dump_yaml,
    flatten,
    from_dict,
    given_keys,
    load_pipeline_config,
    pipeline_output_dir,
    pipeline_teachers,
    to_dict,
)
from orchestrator.config.schema import in_process
from orchestrator.config.pipeline_section import ResolvedTeacher
from orchestrator.infra.safe_load import load_tensors
from orchestrator.teacher.checkpoint import TeacherCheckpointError, import_teacher, load_teacher
from orchestrator.infra.cache_dir import default_cache_dir
from orchestrator.run.alone import alone_config, training_key
from pipelines.stages import cancel, cpu_share, wait_with_progress

TEACHER_KEY_TAG = "orchestrator.teacher_key"
TEACHERS_EXPERIMENT = "distill-teachers"  # where standalone teacher runs go (as the sweep's default teacher)


# ---------------------------------------------------------------- what a teacher is


def teacher_config(base: Config, t: ResolvedTeacher) -> Config:
    """The config that trains teacher ``t`` alone with CE: full train split, the teacher's seed."""
    cfg = apply_overrides(base, {"data.train_subset": None, "seed": t.seed})
    return alone_config(cfg, t.arch, t.epochs, t.lr)


def teacher_key(base: Config, t: ResolvedTeacher) -> str:
    """Cache key. Equal to the sweep's default-teacher key when the teacher's seed is the data seed."""
    key = training_key(apply_overrides(base, {"data.train_subset": None, "seed": t.seed}), t.arch, t.epochs, t.lr)
    return key if t.seed == base.seed else f"{key}-d{base.seed}"


def teacher_path(base: Config, t: ResolvedTeacher) -> Path:
    cache = Path(base.teacher.cache_dir) if base.teacher.cache_dir else default_cache_dir() / "teachers"
    return (cache / f"{base.data.dataset}-{t.arch}-{teacher_key(base, t)}.pt").resolve()


def estimated_cost(base: Config, t: ResolvedTeacher) -> float:
    """MACs per image x epochs: the longest teachers are started first."""
    from orchestrator.models import build_model, describe_model

    try:
        size = NATIVE_SIZES.get(base.data.dataset) or base.data.image_size or 32
        channels = 3 if base.data.dataset in ("cifar10", "cifar100", "imagefolder") else 1
        macs = describe_model(build_model(t.arch, 10, channels), channels, size)["macs"]
    except Exception:  # noqa: BLE001 - ordering only
        macs = 1
    return float(macs) * t.epochs


# ---------------------------------------------------------------- Ray task


@ray.remote(num_cpus=1)
def train_teacher_task(cfg_dict: dict, data_seed: int, path: str, uri: str, run_id: str, storage: str) -> dict:
    """One teacher = one TorchTrainer run (tested at its last epoch, its student written to ``path``), then
    its checkpoint and model logged to its MLflow run, all inside that run's scope."""
    from mlflow.tracking import MlflowClient

    from orchestrator.run.launcher import launch

    cfg = from_dict(cfg_dict)
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    client = MlflowClient(tracking_uri=uri)
    start = time.perf_counter()
    with tracking.run_scope(client, run_id):
        launch(cfg, {"data_seed": data_seed, "save_student": path, "evaluate_test": True, "checkpoint": False,
                     "tracking_uri": uri, "mlflow_run_id": run_id},
               name=f"teacher-{Path(path).stem}", storage_path=storage, in_tune=False)
        ckpt = load_tensors(path, "teacher checkpoint")
        tracking.log_file(client, run_id, path, "checkpoint")
        tracking.log_checkpoint(client, run_id, path, "teacher")  # runs:/<id>/teacher, tensors only
    return {"metrics": dict(ckpt["metrics"]), "time_s": time.perf_counter() - start}


# ---------------------------------------------------------------- driver side


def _cached_metrics(path: Path) -> dict:
    blob = load_tensors(path, "teacher checkpoint")
    return dict(blob.get("metrics", {}))


def _teacher_run(client, experiment_ids: list[str], key: str, arch: str | None) -> str | None:
    """The FINISHED teacher run that trained the cached file ``key`` (this tool's or the sweep's naming)."""
    filters = [f"tags.`{TEACHER_KEY_TAG}` = '{key}'", f"attributes.run_name = '{arch}-{key}'"]
    for where in filters:
        runs = client.search_runs(experiment_ids, filter_string=f"{where} and attributes.status = 'FINISHED'",
                                  max_results=1)
        if runs:
            return runs[0].info.run_id
    return None


def ensure_teachers(
    base: Config,
    uri: str,
    client,
    experiment_id: str,
    parent_id: str | None = None,
    data=None,
) -> list[dict]:
    """Every teacher of ``base.pipeline`` ready to use: given ones checked, cached ones reused, the rest trained.

    Teachers to train run as concurrent Ray tasks (longest first), each a Ray Train run and
    an MLflow ``teacher`` run (nested under ``parent_id`` if given). Returns one dict per
    teacher: name, arch, seed, epochs, lr, source (checkpoint path or URI), key, trained,
    run_id, model_uri, val/acc1, test/acc1 (None for given teachers: the ensemble stage
    evaluates every teacher on the same split).
    """
    out: list[dict] = []
    todo: list[tuple[ResolvedTeacher, Path]] = []
    for t in pipeline_teachers(base):
        entry = {"name": t.name, "arch": t.arch, "seed": t.seed, "epochs": t.epochs, "lr": t.lr, "trained": False,
                 "run_id": None, "model_uri": None, "val/acc1": None, "test/acc1": None}
        if t.checkpoint:
            if data is None:
                from orchestrator.data import build_data

                data = build_data(base.data, base.seed)
            source = import_teacher(t.checkpoint, t.state_dict_arch, data, base.teacher.normalize,
                                    arch_key=f"pipeline.teachers.{t.index}.arch")
            load_teacher(source, data.num_classes, data.in_channels, data.image_size)  # raises if unusable
            entry.update(source=source, key=None, arch=None, epochs=None, lr=None)
            print(f"teacher {t.name}: given ({t.checkpoint})", flush=True)
        else:
            path = teacher_path(base, t)
            entry.update(source=str(path), key=teacher_key(base, t))
            if path.is_file():
                metrics = _cached_metrics(path)
                entry.update({"val/acc1": metrics.get("val/acc1"), "test/acc1": metrics.get("test/acc1")})
                print(f"teacher {t.name}: reusing cached {path.name}", flush=True)
            else:
                todo.append((t, path))
        out.append(entry)

    if todo:
        results = _train(base, todo, uri, client, experiment_id, parent_id)
        for entry in out:
            if entry["name"] in results:
                res = results[entry["name"]]
                entry.update(trained=True, run_id=res["run_id"], train_s=res["time_s"],
                             **{"val/acc1": res["metrics"].get("val/acc1"), "test/acc1": res["metrics"].get("test/acc1")})
    shared = client.get_experiment_by_name(TEACHERS_EXPERIMENT)
    ids = list(dict.fromkeys([experiment_id] + ([shared.experiment_id] if shared else [])))
    for entry in out:
        if entry["key"] and entry["run_id"] is None:
            entry["run_id"] = _teacher_run(client, ids, entry["key"], entry["arch"])
        if entry["run_id"]:
            entry["model_uri"] = f"runs:/{entry['run_id']}/teacher"
    return out


def _train(base: Config, todo, uri, client, experiment_id, parent_id) -> dict[str, dict]:
    storage = str(pipeline_output_dir(base) / "ray-train")
    todo = sorted(todo, key=lambda item: -estimated_cost(base, item[0]))  # longest first: better packing
    pending, queued, runs, epochs = {}, [], {}, {}
    at_once = base.pipeline.max_concurrent if base.pipeline else None
    share = cpu_share(len(todo), at_once)  # all teachers (or at_once) at once, sharing the cores if there are fewer
    with contextlib.ExitStack() as scopes:  # runs a task could not close (cancelled, crashed) end here
        try:
            for t, path in todo:
                cfg = teacher_config(base, t)
                key = teacher_key(base, t)
                run_id = tracking.start_run(
                    client, experiment_id, t.name, "teacher", parent_id=parent_id,
                    tags={TEACHER_KEY_TAG: key, "teacher_name": t.name},
                    params={**flatten(to_dict(cfg)), "teacher.key": key, "teacher.data_seed": base.seed},
                )
                scopes.enter_context(tracking.run_scope(client, run_id))
                print(f"teacher {t.name}: training {t.arch} for {t.epochs} epoch(s), lr {t.lr}, seed {t.seed} "
                      f"(MLflow run {run_id}; cached afterwards at {path})", flush=True)
                task = train_teacher_task if not in_process(cfg) else train_teacher_task.options(num_cpus=share)
                queued.append((t.name, functools.partial(task.remote, to_dict(cfg), base.seed, str(path), uri, run_id,
                                                         storage)))
                runs[t.name], epochs[t.name] = run_id, t.epochs
            results = wait_with_progress(pending, client, runs, epochs, queued=queued, at_once=at_once)
        except BaseException:
            cancel(pending)
            raise
        failed = {label: res for label, res in results.items() if isinstance(res, BaseException)}
        if failed:
            label, exc = next(iter(failed.items()))
            raise RuntimeError(f"teacher {label} failed: {exc}") from exc
    for label, res in results.items():
        m = res["metrics"]
        print(f"teacher {label}: val/acc1 {m.get('val/acc1', float('nan')):.4f}  test/acc1 "
              f"{m.get('test/acc1', float('nan')):.4f}  ({res['time_s']:.0f} s)", flush=True)
    return {label: {**res, "run_id": runs[label]} for label, res in results.items()}


# ---------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m pipelines.teachers", description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description
        or "Train the M teachers of an ensemble as concurrent Ray Train runs (MLflow runs of kind 'teacher', "
        "cached for reuse), or check given checkpoints / MLflow model URIs. Any key can be overridden as "
        "key.sub=value; see --print-config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. teacher.epochs=4")
    parser.add_argument("--config", help="YAML config file (defaults are built in)")
    parser.add_argument("--name", help="pipeline name = MLflow experiment (default: fmnist-ensemble)")
    parser.add_argument("--seed", type=int, help="seeds the data split and the default teacher seeds (default: 0)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("--output-dir", help="pipeline folder (default: ./runs/<name>-pipeline)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, data, tracking store, folder and given teachers, show what would run; "
                        "start and write nothing")
    return parser


def resolve(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    flags = {"name": args.name, "seed": args.seed, "tracking.uri": args.tracking_uri, "ray.address": args.address,
             "pipeline.output_dir": getattr(args, "output_dir", None)}
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if getattr(args, "sweep", False):
        overrides.append("pipeline.sweep=true")
    if getattr(args, "compress", False):
        overrides.append("pipeline.compress=true")
    cfg = load_pipeline_config(args.config, overrides)
    if cfg.pipeline.compress:  # the compress space, its objectives and run sizes; combinations checked
        from pipelines.compress_mode import compress_config

        return compress_config(cfg, given_keys(args.config, overrides))
    if cfg.pipeline.sweep:  # as in a sweep: a key the user set that the space samples is held at their value
        from orchestrator.sweep.cli import hold_given

        cfg = hold_given(cfg, given_keys(args.config, overrides))
    return cfg


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, Config] | int:
    """(args, resolved config), or the exit code when there is nothing more to do: 2 after
    printing a config error, 0 after ``--print-config``."""
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = resolve(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    return args, cfg


def preflight_checks(cfg: Config, data, uri: str) -> None:
    """What a pipeline's run refuses, checked before it starts and writing nothing (so also by ``--dry-run``):
    the tracking store, the pipeline folder (``pipeline.output_dir``) and each given teacher file, built in
    memory (ConfigError or TeacherCheckpointError naming the key or file and the reason)."""
    from orchestrator.run import preflight
    preflight.check_tracking_store(uri)
    preflight.check_storage(str(pipeline_output_dir(cfg)), key="pipeline.output_dir")
    for t in pipeline_teachers(cfg):
        if t.checkpoint:
            preflight.check_teacher(t.checkpoint, t.state_dict_arch, data, cfg.teacher.normalize,
                                    f"pipeline.teachers.{t.index}.arch", uri)


def describe_teachers(cfg: Config) -> list[str]:
    """One line per teacher of ``cfg.pipeline``: given (its file or URI), cached, or to train (how)."""
    lines = ["teachers:"]
    for t in pipeline_teachers(cfg):
        if t.checkpoint:
            lines.append(f"  {t.name:<26} given: {t.checkpoint}")
        else:
            path = teacher_path(cfg, t)
            state = "cached" if path.is_file() else f"to train: {t.epochs} epoch(s), lr {t.lr}, seed {t.seed}"
            lines.append(f"  {t.name:<26} {state}  ({path.name})")
    return lines


def local_cpus(cfg: Config) -> int | None:
    import os

    return cfg.ray.num_cpus or os.cpu_count()


def main(argv: list[str] | None = None) -> int:
    parsed = parse_cli(build_parser(), argv)
    if isinstance(parsed, int):  # a config error (2) or --print-config (0)
        return parsed
    args, cfg = parsed
    from orchestrator.infra import cluster
    from orchestrator.data import DatasetNotFoundError, build_data
    from orchestrator.infra.dry_run import writing_nothing

    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    try:
        with writing_nothing(args.dry_run):
            data = build_data(cfg.data, cfg.seed)
        preflight_checks(cfg, data, uri)
        if not args.dry_run:
            client = tracking.check_connection(uri)
    except (ConfigError, DatasetNotFoundError, TeacherCheckpointError, tracking.TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("\n".join(describe_teachers(cfg)))
        print(f"MLflow: experiment '{TEACHERS_EXPERIMENT}' at {uri}; Ray Train results under "
              f"{pipeline_output_dir(cfg) / 'ray-train'}")
        print("dry run: nothing was started")
        return 0
    started = cluster.connect(cluster.resolve_address(cfg.ray.address), local_cpus(cfg), cfg.ray.ship_package)
    try:
        cluster.check_tracking(uri)  # several nodes: the teachers' runs must reach the store
        experiment_id = tracking.ensure_experiment(client, TEACHERS_EXPERIMENT, uri)
        teachers = ensure_teachers(cfg, uri, client, experiment_id, data=data)
    except (TeacherCheckpointError, cluster.ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished teachers stay cached", file=sys.stderr)
        return 130
    finally:
        if started:
            ray.shutdown()
    print("\nTeachers:")
    for t in teachers:
        acc = "" if t["test/acc1"] is None else f"val/acc1 {t['val/acc1']:.4f}  test/acc1 {t['test/acc1']:.4f}  "
        print(f"  {t['name']:<26} {acc}{t['model_uri'] or t['source']}")
    print(f"MLflow: experiment '{TEACHERS_EXPERIMENT}'; browse: {tracking.ui_command(uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
