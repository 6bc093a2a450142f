"""One Tune trial = one Ray Train ``TorchTrainer`` run of :func:`train_loop_per_worker`.

The Tune function trainable resolves the trial's config (sweep config +
sampled values; every trial trains with the sweep's seeds, ``sweep.seeds``:
common random numbers), opens the trial's nested MLflow run, launches the
TorchTrainer and closes the run (FINISHED or FAILED). Confirmation jobs
(:func:`run_job`) go through the same launcher with one seed each.
Metrics flow worker -> ``ray.train.report`` -> ``TuneReportCallback`` -> Tune
(ASHA, Optuna). Trials Tune stops early are closed by the sweep driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray.tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.config import Config, apply_overrides, flatten, from_dict, search_seeds, to_dict
from orchestrator.train_loop import train_loop_per_worker


@dataclass
class TrialContext:
    """What every trial of a sweep shares (passed with ``tune.with_parameters``)."""

    base: dict  # the sweep's resolved Config as a dict
    teachers: list[str]  # checkpoint paths or MLflow URIs
    teacher_outputs: list[str]  # precomputed teacher-output files ([] = run the teachers live)
    storage_path: str  # absolute; Train runs go to <storage_path>/train
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def trial_number(trial_dir: str, trial_id: str) -> int:
    """Tune's 1-based trial counter, read from the trial folder ``<trainable>_<id>_<N>_<params>_<date>``."""
    tail = os.path.basename(str(trial_dir).rstrip("/")).split(f"{trial_id}_", 1)[-1]
    head = tail.split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def trial_config(base: Config, sampled: dict) -> Config:
    """The sweep's config with the trial's sampled values (its seeds are the sweep's: common random numbers)."""
    return apply_overrides(base, sampled)


def in_process(cfg: Config) -> bool:
    """One CPU worker with ``train.in_process``: Train runs the loop inside the trial process."""
    tr = cfg.train
    return tr.num_workers == 1 and tr.in_process and not tr.use_gpu


def scaling_for(cfg: Config) -> ScalingConfig:
    """In-process (``num_workers=0``, no worker group) when allowed; otherwise a DDP worker group."""
    tr = cfg.train
    if in_process(cfg):
        return ScalingConfig(num_workers=0)
    resources = {"CPU": tr.cpus_per_worker, **({"GPU": 1} if tr.use_gpu else {})}
    return ScalingConfig(num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker=resources)


def trial_resources(cfg: Config) -> dict[str, float]:
    """Logical resources one trial holds: the Tune function plus its Train workers (if any)."""
    tr = cfg.train
    if in_process(cfg):
        return {"CPU": float(tr.cpus_per_worker), "GPU": 0.0}
    return {"CPU": 1.0 + tr.num_workers * tr.cpus_per_worker, "GPU": float(tr.num_workers if tr.use_gpu else 0)}


def checkpoint_config(cfg: Config, factory=CheckpointConfig):
    """Keep the ``train.keep_checkpoints`` best checkpoints by the sweep's metric (the final student);
    Ray 2.60's checkpoint managers (Train and Tune) also never delete the latest one (resume).
    ``factory``: ``ray.train.CheckpointConfig`` or ``ray.tune.CheckpointConfig``."""
    return factory(
        num_to_keep=cfg.train.keep_checkpoints,
        checkpoint_score_attribute=cfg.sweep.metric,
        checkpoint_score_order=cfg.sweep.mode,
    )


def run_trial(sampled: dict, ctx: TrialContext) -> None:
    """The Tune function trainable of a search trial: the sweep's seeds, the sampled values."""
    tune_ctx = ray.tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    number = trial_number(tune_ctx.get_trial_dir(), trial_id)
    cfg = trial_config(from_dict(ctx.base), sampled)
    run_id = _open_run(ctx, trial_id, f"trial-{number:03d}", "trial",
                       {"trial_id": trial_id, "trial_number": str(number)},
                       {**flatten(to_dict(cfg)), **{f"sampled.{k}": v for k, v in sampled.items()}})
    launch(cfg, ctx, run_id, search_seeds(from_dict(ctx.base)), name=f"{cfg.name}-{trial_id}")


def run_job(config: dict, ctx: TrialContext) -> None:
    """The Tune function trainable of a confirmation job ``config["job"]``: one config, one seed,
    trained to the end and tested (see :mod:`orchestrator.confirm`)."""
    job = config["job"]
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = apply_overrides(from_dict(ctx.base), job["overrides"])
    run_id = _open_run(ctx, trial_id, f"{job['label']} seed {job['seed']}", "confirm",
                       {"trial_id": trial_id, "job": job["key"], "config_label": job["label"], "seed": str(job["seed"])},
                       {**flatten(to_dict(cfg)), "seed": job["seed"]})
    launch(cfg, ctx, run_id, [job["seed"]], name=f"{cfg.name}-confirm-{trial_id}", evaluate_test=True)


def _open_run(ctx: TrialContext, trial_id: str, name: str, kind: str, tags: dict, params: dict) -> str:
    """The MLflow child run of this Tune trial under ``ctx.parent_run_id`` (a resumed trial continues its own)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import child_runs, log_params, start_run

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    for run in child_runs(client, ctx.experiment_id, ctx.parent_run_id):
        if run.data.tags.get("trial_id") == trial_id:
            client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    run_id = start_run(client, ctx.experiment_id, name, kind, parent_id=ctx.parent_run_id, tags=tags)
    log_params(client, run_id, params)
    return run_id


def launch(cfg: Config, ctx: TrialContext, run_id: str, seeds: list[int], *, name: str,
           evaluate_test: bool = False) -> None:
    """Run :func:`train_loop_per_worker` as a TorchTrainer for ``cfg`` and ``seeds``; close the MLflow
    run FINISHED (tag outcome completed/early_stopped) or FAILED (tag orchestrator.error)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import OUTCOME, set_tags

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    local = in_process(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "seeds": seeds,
            "teachers": ctx.teachers,
            "teacher_outputs": ctx.teacher_outputs,
            "data_seed": ctx.base["seed"],  # the sweep's split, whatever the training seeds
            "in_process": local,
            "tracking_uri": ctx.tracking_uri,
            "mlflow_run_id": run_id,
            "evaluate_test": evaluate_test,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=scaling_for(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=os.path.join(ctx.storage_path, "train"),
            callbacks=[] if local else [TuneReportCallback()],
            failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=0),
            checkpoint_config=checkpoint_config(cfg),
        ),
    )
    try:
        trainer.fit()
    except SystemExit:  # Tune stopping the trial (ASHA) ends the trial function this way
        epochs = max((m.value for m in client.get_metric_history(run_id, "epoch")), default=0)
        outcome = "completed" if epochs >= cfg.train.epochs else "early_stopped"
        set_tags(client, run_id, {OUTCOME: outcome})
        client.set_terminated(run_id, "FINISHED")
        raise
    except BaseException as exc:
        set_tags(client, run_id, {OUTCOME: "failed", "orchestrator.error": f"{type(exc).__name__}: {exc}"[:5000]})
        client.set_terminated(run_id, "FAILED")
        raise
    set_tags(client, run_id, {OUTCOME: "completed"})
    client.set_terminated(run_id, "FINISHED")
