"""One Tune trial = one Ray Train ``TorchTrainer`` run of :func:`train_loop_per_worker`.

The Tune function trainable resolves the trial's config (sweep config +
sampled values, seed = sweep seed + trial number), opens the trial's nested
MLflow run, launches the TorchTrainer and closes the run (FINISHED or FAILED).
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

from orchestrator.config import Config, apply_overrides, flatten, from_dict, to_dict
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


def trial_config(base: Config, sampled: dict, number: int) -> Config:
    return apply_overrides(base, {**sampled, "seed": base.seed + number})


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
    """The Tune function trainable."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import OUTCOME, child_runs, log_params, set_tags, start_run

    tune_ctx = ray.tune.get_context()
    trial_id = tune_ctx.get_trial_id()
    number = trial_number(tune_ctx.get_trial_dir(), trial_id)
    cfg = trial_config(from_dict(ctx.base), sampled, number)

    client = MlflowClient(tracking_uri=ctx.tracking_uri)
    existing = [
        r for r in child_runs(client, ctx.experiment_id, ctx.parent_run_id) if r.data.tags.get("trial_id") == trial_id
    ]
    if existing:  # a resumed trial continues its run
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = start_run(
            client,
            ctx.experiment_id,
            f"trial-{number:03d}",
            "trial",
            parent_id=ctx.parent_run_id,
            tags={"trial_id": trial_id, "trial_number": str(number)},
        )
        log_params(client, run_id, {**flatten(to_dict(cfg)), **{f"sampled.{k}": v for k, v in sampled.items()}})

    local = in_process(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "teachers": ctx.teachers,
            "teacher_outputs": ctx.teacher_outputs,
            "data_seed": ctx.base["seed"],  # the sweep's split, not one per trial seed
            "in_process": local,
            "tracking_uri": ctx.tracking_uri,
            "mlflow_run_id": run_id,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=scaling_for(cfg),
        run_config=RunConfig(
            name=f"{cfg.name}-{trial_id}",
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
