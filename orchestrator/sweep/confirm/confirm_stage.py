"""Driving the confirmation stage: the candidates re-trained on fresh seeds as nested MLflow stage runs,
and the verdict (:mod:`orchestrator.sweep.confirm.outcome` holds the logic: candidates, jobs, the winner)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from orchestrator.infra import cluster, storage, tracking
from orchestrator.sweep.confirm import outcome, front
from orchestrator.config.schema import confirm_seeds, search_seeds
from orchestrator.data import DataBundle
from orchestrator.run.learner import evaluate_model
from orchestrator.sweep.plan import Plan
from orchestrator.sweep import tune_runs
from orchestrator.sweep.errors import SweepError
from orchestrator.sweep.folder import record_state
from orchestrator.sweep.summary import fmt, headline_metrics
from orchestrator.teacher.checkpoint import load_model_checkpoint
from orchestrator.run.worker import student_file
from orchestrator.sweep.trial import TrialContext


def confirm_winner(client, parent_id: str, summaries, plan: Plan, data: DataBundle, points: list, ctx: TrialContext,
                   exp_dir: Path, state: dict, resume: bool, front_spec: front.FrontSpec | None = None,
                   cost_of: Callable[[dict], Mapping[str, float]] | None = None) -> outcome.Verdict:
    """Re-train the best configs (+ best paper default + student alone) on fresh seeds; or, with
    ``sweep.confirm.top_k=0``, test the best trial's students and train the student alone on the search seeds.
    With ``front_spec`` (a cost objective with top_k > 0, or a budget) the candidates are the front's
    (:func:`orchestrator.sweep.confirm.front.select`; ``cost_of``: sampled params -> ``cost/*`` metrics), each with its own
    architecture alone; the winner is still the best on mean validation accuracy."""
    cfg = plan.cfg
    metric, mode, top_k = cfg.sweep.metric, cfg.sweep.mode, cfg.sweep.confirm.top_k
    confirmed = top_k > 0
    seeds = confirm_seeds(cfg) if confirmed else search_seeds(cfg)
    if front_spec is not None and (confirmed or front_spec.budget is not None):  # unconfirmed: the budget still holds
        try:
            cands = front.select(summaries, points, front_spec, max(top_k, 1), cost_of, cfg.sweep.baseline)
        except ValueError as exc:  # NoStudentFits included
            raise SweepError(str(exc)) from exc
    else:
        cands = outcome.candidates(summaries, points if confirmed else [], max(top_k, 1), metric, mode,
                                   cfg.sweep.baseline)
    if not confirmed:  # the best trial as it was: its students, one per search seed
        best = cands[0]
        row = next(s for s in summaries if s.number == best.trial)
        for s in seeds:
            best.val[s] = row.best.get(f"seed{s}/{metric}", row.best[metric])
            folder = storage.local_copy(row.checkpoint_dir, cfg.sweep.storage_path, exp_dir / "checkpoints")
            path = folder / student_file(s, seeds)
            model = load_model_checkpoint(path, data.num_classes, data.in_channels)
            best.test[s] = evaluate_model(model, data.test, cfg.data.eval_batch_size)["acc1"]
            best.checkpoints[s] = row.checkpoint_dir
    stage = "confirm" if confirmed else "baseline"
    to_train = [c for c in cands if confirmed or c.role == "alone"]
    train_stage(client, parent_id, stage, to_train, seeds, plan, ctx, exp_dir, state, resume)
    try:
        verdict = outcome.decide(cands, seeds, cfg.sweep.confirm.level, confirmed)
        if cfg.sweep.baseline and verdict.chosen.alone is None:  # candidates differ in optimiser settings
            cands.append(outcome.alone_for([verdict.chosen]))
            train_stage(client, parent_id, f"{stage}-alone", cands[-1:], seeds, plan, ctx, exp_dir, state, resume)
            verdict = outcome.decide(cands, seeds, cfg.sweep.confirm.level, confirmed)
    except ValueError as exc:
        raise SweepError(f"{exc}; see the {stage} stage's MLflow runs") from exc
    if f"{stage}_run_id" in state:
        tracking.log_metrics(client, state[f"{stage}_run_id"], headline_metrics({}, verdict), step=0)
    return verdict


def train_stage(client, parent_id, stage: str, cands: list[outcome.Candidate], seeds: list[int], plan: Plan,
                ctx: TrialContext, exp_dir: Path, state: dict, resume: bool) -> None:
    """Train ``cands`` x ``seeds`` as the nested MLflow stage run ``stage`` (its id kept for --resume)."""
    if not cands:
        return
    fixed = "".join(f", {k}={fmt(v)}" for k, v in plan.space.fixed.items())
    print(f"\n== {stage}: {len(cands)} config(s) x seeds {seeds}{' (all with' + fixed[1:] + ')' if fixed else ''} ==\n" +
          "\n".join(f"  {c.label}: " + ", ".join(f"{k}={fmt(v)}" for k, v in c.overrides.items()) for c in cands),
          flush=True)
    stage_id = state.get(f"{stage}_run_id") or tracking.start_run(
        client, client.get_run(parent_id).info.experiment_id, stage, "stage", parent_id=parent_id,
        tags={"stage": stage, "seeds": json.dumps(seeds)},
    )
    if state.get(f"{stage}_run_id"):  # resumed: reopened (run_scope closes it again)
        tracking.reopen_run(client, stage_id)
    record_state(exp_dir, state, **{f"{stage}_run_id": stage_id})
    with tracking.run_scope(client, stage_id, close_children=True):
        if not cluster.wait_for_free({"CPU": plan.trial_cpu, "GPU": plan.trial_gpu}):
            print("warning: the search's stopped trials still hold their resources after 3 minutes", file=sys.stderr)
        results = tune_runs.run_jobs(plan, outcome.jobs(cands, seeds, plan.space.fixed),
                                     replace(ctx, parent_run_id=stage_id), exp_dir / stage, resume)
        failed = outcome.collect(results, cands)
        if failed:
            print(f"warning: {len(failed)} {stage} run(s) failed: {', '.join(failed)}", file=sys.stderr)
