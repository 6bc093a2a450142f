"""The one place a Ray Train ``TorchTrainer`` is built: scaling, failure and checkpoint policy.

Every Ray Train run (a sweep trial, a confirmation job, a pipeline teacher) runs
:func:`~orchestrator.run.worker.run_worker` through :func:`launch`.
One CPU worker with ``train.in_process`` runs the loop inside the calling process
(``ScalingConfig(num_workers=0)``, no worker group); otherwise a DDP worker group.
Failed workers restart from the last checkpoint up to ``train.max_failures`` times;
the ``train.keep_checkpoints`` best checkpoints (by ``sweep.metric``) are kept.
"""

from __future__ import annotations

from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.config.schema import Config, in_process, to_dict
from orchestrator.run.worker import run_worker


def scaling_for(cfg: Config) -> ScalingConfig:
    """In-process (``num_workers=0``, no worker group) when allowed; otherwise a DDP worker group."""
    tr = cfg.train
    if in_process(cfg):
        return ScalingConfig(num_workers=0)
    resources = {"CPU": tr.cpus_per_worker, **({"GPU": 1} if tr.use_gpu else {})}
    return ScalingConfig(num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker=resources)


def trial_resources(cfg: Config) -> dict[str, float]:
    """Logical resources one run holds: the calling Tune function or task plus its Train workers (if any)."""
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


def launch(cfg: Config, loop_config: dict, *, name: str, storage_path: str, in_tune: bool = True) -> Result:
    """Train ``cfg`` as one TorchTrainer run of ``run_worker`` (``loop_config``: its options
    besides ``cfg``, see there). ``in_tune``: called from a Tune function trainable, so rank 0's reports
    reach Tune (ASHA, Optuna); otherwise (a Ray task) they stay with Train."""
    local = in_process(cfg)
    trainer = TorchTrainer(
        run_worker,
        train_loop_config={**loop_config, "cfg": to_dict(cfg), "in_process": local, "in_tune": in_tune},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=scaling_for(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[TuneReportCallback()] if in_tune and not local else [],
            failure_config=FailureConfig(max_failures=cfg.train.max_failures, controller_failure_limit=0),
            checkpoint_config=checkpoint_config(cfg),
        ),
    )
    return trainer.fit()
