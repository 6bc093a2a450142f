"""One Tune trial = one Ray Train ``TorchTrainer`` run (:func:`orchestrator.run.launcher.launch`).

The Tune function trainable resolves the trial's config (sweep config +
sampled values; every trial trains with the sweep's seeds, ``sweep.seeds``:
common random numbers), opens the trial's nested MLflow run, launches the
TorchTrainer inside the run's scope (:func:`orchestrator.infra.tracking.run_scope`). Confirmation jobs
(:func:`run_job`) go through the same launcher with one seed each.
Metrics flow worker -> ``ray.train.report`` -> ``TuneReportCallback`` -> Tune
(ASHA, Optuna). Trials Tune stops early are closed by the sweep driver.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
import ray.tune

from orchestrator.infra import storage
from orchestrator.config.schema import Config, apply_overrides, flatten, from_dict, search_seeds, to_dict
from orchestrator.run.launcher import launch
from orchestrator.infra.ray_compat import tune_stop_signal


NODE_TAG = "ray.node_id"


@dataclass
class TrialContext:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    base: dict  # the sweep's resolved Config as a dict
    teachers: list[str]  # checkpoint paths or MLflow URIs
    teacher_outputs: list[str]  # precomputed teacher-output files ([] = run the teachers live)
    storage_path: str  # the sweep's folder or its URI (orchestrator.infra.storage); Train runs go to <storage_path>/train
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    costs: dict = field(default_factory=dict)  # student architecture -> its cost, measured by the driver
    data_shape: list = field(default_factory=list)  # [num_classes, in_channels, image_size]; [] = costs not logged


def trial_number(trial_dir: str, trial_id: str) -> int:
    """Tune's 1-based trial counter, read from the trial folder ``<trainable>_<id>_<N>_<params>_<date>``."""
    tail = os.path.basename(str(trial_dir).rstrip("/")).split(f"{trial_id}_", 1)[-1]
    head = tail.split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def trial_config(base: Config, sampled: dict) -> Config:
    """The sweep's config with the trial's sampled values (its seeds are the sweep's: common random numbers)."""
    return apply_overrides(base, sampled)


def run_trial(sampled: dict, ctx: TrialContext) -> None:
    """The Tune function trainable of a search trial: the sweep's seeds, the sampled values."""
    tune_ctx = ray.tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    number = trial_number(tune_ctx.get_trial_dir(), trial_id)
    cfg = trial_config(from_dict(ctx.base), sampled)
    skipped = over_budget_result(cfg, ctx)
    if skipped is not None:  # never trained: one result saying so (the schedulers and the leaderboard skip it)
        ray.tune.report(skipped)
        return
    run_id, ended = _open_run(ctx, trial_id, f"trial-{number:03d}", "trial",
                              {"trial_id": trial_id, "trial_number": str(number)},
                              {**flatten(to_dict(cfg)), **{f"sampled.{k}": v for k, v in sampled.items()}})
    if ended:
        return
    costs = log_cost(ctx, run_id, cfg)
    _launch(cfg, ctx, run_id, search_seeds(from_dict(ctx.base)), name=f"{cfg.name}-{trial_id}", costs=costs)


def over_budget_result(cfg: Config, ctx: TrialContext) -> dict | None:
    """The one result of a trial whose student exceeds ``sweep.budget`` (its costs, the worst value of
    ``sweep.metric`` for Optuna, :data:`~orchestrator.config.objectives.OVER_BUDGET` = 1), or None: it fits
    (or there is no budget)."""
    from orchestrator.deploy.cost import cost_metrics
    from orchestrator.sweep.costs import cost_of
    from orchestrator.config.objectives import OVER_BUDGET, budget_of

    budget = budget_of(cfg)
    if budget is None or not ctx.data_shape:
        return None
    costs = cost_metrics(cost_of(cfg, ctx.costs, ctx.data_shape))
    if budget.fits(costs):
        return None
    worst = float("-inf") if cfg.sweep.mode == "max" else float("inf")
    return {**costs, cfg.sweep.metric: worst, OVER_BUDGET: 1.0}


def run_job(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable of a confirmation job ``config["job"]``: one config, one seed,
    trained to the end and tested (see :mod:`orchestrator.sweep.confirm.outcome`)."""
    job = config["job"]
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = apply_overrides(from_dict(ctx.base), job["overrides"])
    run_id, ended = _open_run(
        ctx, trial_id, f"{job['label']} seed {job['seed']}", "confirm",
        {"trial_id": trial_id, "job": job["key"], "config_label": job["label"], "seed": str(job["seed"])},
        {**flatten(to_dict(cfg)), "seed": job["seed"]})
    if ended:  # it ended before its driver died: what it reported last, again
        ray.tune.report(_finished_job_result(ctx, trial_id, run_id, cfg))
        return
    costs = log_cost(ctx, run_id, cfg)
    _launch(cfg, ctx, run_id, [job["seed"]], name=_job_run_name(cfg, trial_id), evaluate_test=True, costs=costs)


def log_cost(ctx: TrialContext, run_id: str, cfg: Config) -> dict[str, float]:
    """The student's cost as metrics of run ``run_id`` (``cost/params``, ``cost/macs``, ``cost/latency_ms``,
    ``cost/latency_ms_b64``, step 0) and tags (its architecture, the thread count and the machine timed on);
    returns the metrics ({} when the context has no data shape: costs not logged)."""
    if not ctx.data_shape:
        return {}
    from mlflow.tracking import MlflowClient

    from orchestrator.deploy.cost import cost_metrics
    from orchestrator.sweep.costs import cost_of
    from orchestrator.infra.tracking import log_metrics, set_tags

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    cost = cost_of(cfg, ctx.costs, ctx.data_shape)
    metrics = cost_metrics(cost)
    log_metrics(client, run_id, metrics, step=0)
    set_tags(client, run_id, {"cost.arch": cost["arch"], "cost.threads": str(cost["threads"]),
                              "cost.machine": cost["machine"]})
    return metrics


def _job_run_name(cfg: Config, trial_id: str) -> str:
    """The Ray Train run of a confirmation job (its folder under ``<storage_path>/train``)."""
    return f"{cfg.name}-confirm-{trial_id}"


def _open_run(ctx: TrialContext, trial_id: str, name: str, kind: str, tags: dict, params: dict) -> tuple[str, bool]:
    """(id, ended) of the MLflow child run of this Tune trial under ``ctx.parent_run_id`` (a resumed trial
    continues its own), tagged with the Ray node the trial runs on (``ray.node_id``). ``ended``: that run already
    ended FINISHED (completed, or stopped by ASHA): the trial ended before its driver died and Tune's restored
    state, saved earlier, did not know it yet. Nothing is to be trained again (a confirmation job reports its result again: :func:`_finished_job_result`)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.infra.tracking import log_params, reopen_run, set_tags, start_run

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    # Where it runs (its last start, if resumed); outside Ray (tests) nothing: asking would start a Ray.
    node = {NODE_TAG: ray.get_runtime_context().get_node_id()} if ray.is_initialized() else {}
    run = _own_run(client, ctx, trial_id)
    if run is not None:
        if run.info.status == "FINISHED":
            return run.info.run_id, True
        reopen_run(client, run.info.run_id)
        if node:
            set_tags(client, run.info.run_id, node)
        return run.info.run_id, False
    run_id = start_run(client, ctx.experiment_id, name, kind, parent_id=ctx.parent_run_id, tags={**tags, **node})
    log_params(client, run_id, params)
    return run_id, False


def _own_run(client, ctx: TrialContext, trial_id: str):
    """The MLflow child run of Tune trial ``trial_id`` under ``ctx.parent_run_id``, if it has one."""
    from orchestrator.infra.tracking import child_runs

    return next(iter(child_runs(client, ctx.experiment_id, ctx.parent_run_id, {"trial_id": trial_id})), None)


def _finished_job_result(ctx: TrialContext, trial_id: str, run_id: str, cfg: Config) -> dict:
    """What the confirmation job ``trial_id``, whose run ``run_id`` ended FINISHED, reported last
    (:mod:`orchestrator.sweep.confirm.finished_job`); its final checkpoint is in the Tune trial's folder (in-process) or in
    its Train run's (a worker group). If it cannot be read back whole, the run's error tag says why and the
    job fails."""
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.confirm.finished_job import CHECKPOINT_PATH, FinishedJobError, finished_job_result
    from orchestrator.infra.tracking import ERROR, set_tags
    from orchestrator.run.worker import STUDENT_FILE

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    folders = [ray.tune.get_context().get_storage().trial_fs_path,
               os.path.join(ctx.storage_path, "train", _job_run_name(cfg, trial_id))]
    try:
        if not storage.is_uri(ctx.storage_path):
            return finished_job_result(client, run_id, cfg.train.epochs, folders)
        with tempfile.TemporaryDirectory() as tmp:  # the student files, read here; reported as paths on the storage
            pairs = storage.checkpoint_files(folders, ctx.storage_path, STUDENT_FILE, Path(tmp))
            result = finished_job_result(client, run_id, cfg.train.epochs, [local for local, _ in pairs])
            found = Path(result[CHECKPOINT_PATH])
            local, remote = next((lo, re) for lo, re in pairs if found.is_relative_to(lo))
            return {**result, CHECKPOINT_PATH: f"{remote}/{found.relative_to(local).as_posix()}"}
    except FinishedJobError as exc:
        set_tags(client, run_id, {ERROR: str(exc)})
        raise


def _launch(cfg: Config, ctx: TrialContext, run_id: str, seeds: list[int], *, name: str,
            evaluate_test: bool = False, costs: dict[str, float] | None = None) -> None:
    """Train ``cfg`` on ``seeds`` as one TorchTrainer run inside the scope of MLflow run ``run_id``; ``costs``
    (the student's ``cost/*`` metrics) go with every report, so Tune's searcher and scheduler see them."""
    from mlflow.tracking import MlflowClient

    from orchestrator.infra.tracking import run_scope

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    with run_scope(client, run_id, expected_epochs=cfg.train.epochs), _stopped_by_tune():
        launch(cfg, {
            "seeds": seeds,
            "teachers": ctx.teachers,
            "teacher_outputs": ctx.teacher_outputs,
            "inputs_uri": storage.inputs_uri(ctx.storage_path),  # what each node downloads once (orchestrator.infra.storage)
            "data_seed": ctx.base["seed"],  # the sweep's split, whatever the training seeds
            "tracking_uri": ctx.tracking_uri,
            "mlflow_run_id": run_id,
            "evaluate_test": evaluate_test,
            "report_extra": dict(costs or {}),
        }, name=name, storage_path=os.path.join(ctx.storage_path, "train"))



@contextlib.contextmanager
def _stopped_by_tune() -> Iterator[None]:
    """An error raised once Tune is stopping this trial (``ActorDiedError``: the Train controller died with
    the trial's placement group) becomes SystemExit, as if the trial had learnt it at a report: the trial was
    stopped, it did not fail (:func:`orchestrator.infra.tracking.run_scope`)."""
    stopping = tune_stop_signal()
    try:
        yield
    except Exception as exc:
        if stopping():
            raise SystemExit(0) from exc
        raise
