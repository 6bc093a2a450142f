"""Tune plumbing shared by the search and the stages: a trial's resources, how many run at once, the run
config (storage, failure budget, checkpoint retention) and a grid of jobs."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from orchestrator.infra import cluster, storage
from orchestrator.sweep.confirm import outcome
from orchestrator.run.launcher import checkpoint_config
from orchestrator.config.schema import in_process
from orchestrator.sweep.plan import Plan
from orchestrator.sweep import driver_copy
from orchestrator.sweep.results_log import ResultsLog
from orchestrator.infra.ray_compat import save_state_before_trials_start
from orchestrator.sweep.trial import TrialContext, run_job


def trainable(fn, ctx: TrialContext, plan: Plan):
    """``fn`` (run_trial or run_job) with the sweep's context and one trial's resources for Tune."""
    cfg = plan.cfg
    resources = {"cpu": plan.trial_cpu if in_process(cfg) else 1}
    if in_process(cfg) and plan.trial_gpu:
        resources["gpu"] = plan.trial_gpu
    return tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)


def concurrency(plan: Plan) -> int:
    """Trials at once: ``sweep.max_concurrent``, else what the cluster fits."""
    return plan.cfg.sweep.max_concurrent or cluster.max_concurrency({"CPU": plan.trial_cpu, "GPU": plan.trial_gpu})


def run_config(plan: Plan, folder: Path, printer: tune.Callback) -> tune.RunConfig:
    """Tune's run config for the trials or a stage: storage ``folder`` (or its place under a URI
    ``sweep.storage_path``: :mod:`orchestrator.infra.storage`), one progress printer, the one per-trial log
    file (:mod:`orchestrator.sweep.results_log`), the failure budget and checkpoint retention of ``train.*``; with
    a URI, the sweep folder's copy in the storage (:mod:`orchestrator.sweep.driver_copy`)."""
    cfg = plan.cfg
    parent, name = storage.split(storage.location(cfg.sweep.storage_path, folder))
    return tune.RunConfig(
        name=name, storage_path=parent, verbose=0, callbacks=[printer, ResultsLog(), *driver_copy.callbacks(cfg.sweep.storage_path, folder)],
        # In-process trials are restarted by Tune, worker groups by Train (trial.py): same budget.
        failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures if in_process(cfg) else 0,
                                          fail_fast=False),
        checkpoint_config=checkpoint_config(cfg, tune.CheckpointConfig),
    )


def run_jobs(plan: Plan, jobs: list[dict], ctx: TrialContext, folder: Path, resume: bool) -> tune.ResultGrid:
    """The jobs as one Tune grid of Ray Train runs, as many at once as the cluster fits (or the
    interrupted grid in ``folder`` continued, when resuming)."""
    cfg = plan.cfg
    save_state_before_trials_start()  # a job that started is one a restore resumes (orchestrator.infra.ray_compat)
    fn = trainable(run_job, ctx, plan)
    place = storage.location(cfg.sweep.storage_path, folder)
    if resume and tune.Tuner.can_restore(place):
        return tune.Tuner.restore(place, trainable=fn, resume_unfinished=True, resume_errored=True).fit()
    tuner = tune.Tuner(
        fn,
        param_space={"job": tune.grid_search(jobs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency(plan), reuse_actors=in_process(cfg)),
        run_config=run_config(plan, folder, outcome.JobPrinter(len(jobs))),
    )
    return tuner.fit()
