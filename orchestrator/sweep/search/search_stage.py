"""The search: Tune trials sampled by Optuna's TPE (the paper defaults first), stopped early by ASHA (never the
paper defaults: :class:`PaperDefaultsFinish`). With several objectives (``sweep.objectives``: accuracy and
costs) Optuna's TPE is multi-objective (MOTPE) and early stopping ranks trials by Pareto front
(:class:`~orchestrator.sweep.search.pareto_halving.ParetoHalving`), so a small student is not stopped for trailing
large ones."""

from __future__ import annotations

from pathlib import Path

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from orchestrator.infra import storage
from orchestrator.config.schema import asha_grace, tpe_startup_trials
from orchestrator.config.schema import in_process
from orchestrator.sweep.plan import Plan
from orchestrator.infra.ray_compat import JournalSearch, save_state_before_trials_start
from orchestrator.sweep.search.space import matching_point
from orchestrator.sweep import tune_runs
from orchestrator.sweep.folder import optuna_storage
from orchestrator.config.objectives import OVER_BUDGET, resolve
from orchestrator.sweep.search.pareto_halving import ParetoHalving
from orchestrator.sweep.progress import ProgressPrinter
from orchestrator.sweep.trial import TrialContext, run_trial


class PaperDefaultsFinish(ASHAScheduler):
    """ASHA that never stops a paper-default trial: each method's published setting is trained to the last epoch
    and ranked on its final value, so a slow starter under a cosine schedule (CRD+KD's, behind KD at epoch 2 and
    ahead at epoch 5 on fresh seeds) is not dropped before the confirmation. Its results still set ASHA's rung
    cut-offs for the other trials. Cost: at most (epochs - grace period) epochs per paper default."""

    def __init__(self, points: list, **asha):
        super().__init__(**asha)
        self.points = points

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(OVER_BUDGET):  # a student over sweep.budget, not trained: no rung sees it
            return self.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        return self.CONTINUE if matching_point(trial.config, self.points) else decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and result.get(OVER_BUDGET):
            self.on_trial_remove(tune_controller, trial)
            return
        super().on_trial_complete(tune_controller, trial, result)


def search(plan: Plan, points: list, ctx: TrialContext, exp_dir: Path, resume: bool) -> tune.ResultGrid:
    """Run the search in ``exp_dir`` (or continue it there, when resuming); ``points``: the paper-default
    points (:func:`orchestrator.sweep.search.space.paper_points`) evaluated first. The Optuna study lives in the folder's
    journal (Tune's restored searcher reopens it); a search Tune cannot restore starts a fresh one. A trial
    starts only once Tune's saved state holds it (:mod:`orchestrator.infra.ray_compat`)."""
    cfg = plan.cfg
    save_state_before_trials_start()
    trainable = tune_runs.trainable(run_trial, ctx, plan)
    place = storage.location(cfg.sweep.storage_path, exp_dir)  # exp_dir, or its place under a storage URI
    if resume and tune.Tuner.can_restore(place):
        return tune.Tuner.restore(place, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True).fit()
    concurrency = tune_runs.concurrency(plan)
    print(f"running up to {concurrency} trial(s) at once ({plan.mode_text})", flush=True)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=tpe_startup_trials(cfg.sweep))
    params = [p.params for p in points]
    if params:
        print("first trials: the paper defaults\n" + "\n".join(f"  {p.describe()}" for p in points), flush=True)
    objectives = resolve(cfg)
    multi = len(objectives) > 1  # Optuna gets metric and mode lists; Tune's TuneConfig none (its metric is single)
    searcher = JournalSearch(
        space=plan.space.define_by_run(cfg), sampler=sampler,
        metric=list(objectives) if multi else cfg.sweep.metric, mode=list(objectives.values()) if multi else cfg.sweep.mode,
        points_to_evaluate=params or None, study_name=exp_dir.name, storage=optuna_storage(exp_dir, fresh=True),
    )
    halving = dict(
        max_t=plan.max_epochs + 1,  # must exceed the number of reports of the longest trial (NOTES-ray pitfall 4)
        grace_period=asha_grace(cfg),
        reduction_factor=cfg.sweep.asha.reduction_factor,
    )
    if multi:
        scheduler = ParetoHalving(objectives, spare=lambda config: matching_point(config, points) is not None,
                                  **halving)
    else:
        scheduler = PaperDefaultsFinish(points, time_attr="training_iteration", **halving)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,
            metric=None if multi else cfg.sweep.metric, mode=None if multi else cfg.sweep.mode,
            num_samples=cfg.sweep.num_samples, max_concurrent_trials=concurrency,
            reuse_actors=in_process(cfg),
        ),
        run_config=tune_runs.run_config(
            plan, exp_dir, ProgressPrinter(cfg.sweep.metric, cfg.sweep.mode, cfg.train.epochs, cfg.sweep.num_samples)),
    )
    return tuner.fit()
