"""Runs a planned sweep end to end: Ray, teacher, Tune search, confirmation stage, registration.

The search's trials share their seeds; the confirmation stage (:mod:`orchestrator.confirm`) re-trains
the best configs, the best paper default and the student alone on fresh seeds and chooses by mean
validation accuracy. Every run this opens is closed on success (FINISHED), error (FAILED) and Ctrl-C
(KILLED); trials that ASHA stopped are closed FINISHED with tag ``orchestrator.outcome=early_stopped``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import mlflow
import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator import cluster, confirm, tracking
from orchestrator.config import asha_grace, confirm_seeds, dump_yaml, flatten, search_seeds, to_dict, tpe_startup_trials
from orchestrator.data import DataBundle
from orchestrator.distill import registry
from orchestrator.engine import evaluate_model
from orchestrator.export import example_batch, export_student
from orchestrator.leaderboard import best_summary, summarise, to_frame
from orchestrator.output_cache import teacher_outputs_file
from orchestrator.search import paper_points, possible_configs, sampled_keys, space_path
from orchestrator.stats import mean_sd
from orchestrator.plan import Plan
from orchestrator.teachers import (
    TeacherCheckpointError,
    ensure_teacher,
    load_model_checkpoint,
    load_teacher,
)
from orchestrator.train_loop import STUDENT_FILE, student_file
from orchestrator.launcher import checkpoint_config, in_process
from orchestrator.trial import TrialContext, run_job, run_trial

STATE_FILE = "orchestrator-sweep.json"


class SweepError(RuntimeError):
    """The sweep ran but produced nothing usable (e.g. every trial failed)."""


def _number(trial) -> str:
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else trial.trial_id


class ProgressPrinter(tune.Callback):
    """One line per reported epoch, and one per finished/stopped/failed trial."""

    def __init__(self, metric: str, mode: str, epochs: int, total: int):
        self.metric, self.mode, self.epochs, self.total = metric, mode, epochs, total
        self.best: tuple[float, str] | None = None
        self.done = 0
        self.start = time.perf_counter()

    def _clock(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 60:3d}m{s % 60:02d}s"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, _number(trial))
        running = sum(t.status == "RUNNING" for t in trials)
        print(
            f"{self._clock()}  trial {_number(trial):>3}  epoch {result.get('epoch', '?')}/{self.epochs}  "
            f"{self.metric} {value:.4f}  train/loss {result.get('train/loss', float('nan')):.4f}  "
            f"{result.get('throughput/train_img_s', 0):6.0f} img/s  | best {self.best[0]:.4f} "
            f"(trial {self.best[1]})  | {running} running, {self.done}/{self.total} done",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        epochs = trial.last_result.get("epoch", 0) if trial.last_result else 0
        how = "completed" if epochs >= self.epochs else f"stopped early by ASHA after {epochs} epoch(s)"
        print(f"{self._clock()}  trial {_number(trial):>3}  {how}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"{self._clock()}  trial {_number(trial):>3}  FAILED (see its MLflow run's orchestrator.error tag)", flush=True)


class SweepRunner:
    """``teachers``: distil from these (paths/URIs; several = an ensemble) instead of ``ensure_teacher``;
    ``teacher_outputs``: their precomputed output files (None: computed here when possible);
    ``parent_tags``: extra tags of the sweep's parent run (e.g. ``mlflow.parentRunId`` of a pipeline stage)."""

    def __init__(
        self,
        plan: Plan,
        data: DataBundle,
        resume: str | None = None,
        *,
        teachers: list[str] | None = None,
        teacher_outputs: list[str] | None = None,
        parent_tags: dict[str, str] | None = None,
    ):
        self.plan, self.cfg, self.data, self.resume = plan, plan.cfg, data, resume
        self.storage = Path(self.cfg.sweep.storage_path or "runs").resolve()
        self.teachers, self.given_outputs, self.parent_tags = teachers, teacher_outputs, dict(parent_tags or {})
        self.points = paper_points(plan.space, self.cfg) if self.cfg.sweep.paper_defaults else []

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        cfg, start = self.cfg, time.perf_counter()
        uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
        try:
            client = tracking.check_connection(uri)
            exp_dir, state = self._experiment_dir()
        except (tracking.TrackingError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        mlflow.set_tracking_uri(uri)
        started_ray = cluster.connect(cluster.resolve_address(cfg.ray.address), self._local_cpus())
        try:
            cluster.check_fits(
                {"CPU": self.plan.trial_cpu, "GPU": self.plan.trial_gpu},
                cfg.train.cpus_per_worker, cfg.train.use_gpu, cfg.train.num_workers,
            )
            teachers = list(self.teachers) if self.teachers else [ensure_teacher(cfg, uri)]
            experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment or cfg.name, uri)
            parent_id = state.get("parent_run_id") or tracking.start_run(
                client, experiment_id, exp_dir.name, "sweep",
                params=flatten(to_dict(cfg)),
                tags={"search_space": self.plan.space.name, "storage": str(exp_dir), **self.parent_tags},
            )
            if state.get("parent_run_id"):
                client.update_run(parent_id, status="RUNNING")
            with tracking.run_scope(client, parent_id, close_children=True,
                                    on_finish=lambda: self._report(client, parent_id, exp_dir)):
                self._sweep(client, parent_id, experiment_id, teachers, exp_dir, state, uri, start)
            return 0
        except KeyboardInterrupt:
            print(f"\ninterrupted; finished trials are kept. Resume with: python -m orchestrator.sweep --resume "
                  f"{exp_dir}", file=sys.stderr)
            return 130
        except (cluster.ClusterError, TeacherCheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except SweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if started_ray:
                ray.shutdown()

    def _sweep(self, client, parent_id: str, experiment_id: str, teachers: list[str], exp_dir: Path, state: dict,
               uri: str, start: float) -> None:
        """Inside the parent run: teacher outputs, the search, confirmation, registration."""
        cfg = self.cfg
        _write_json(exp_dir / STATE_FILE, {"parent_run_id": parent_id, "experiment_id": experiment_id})
        tracking.log_text(client, parent_id, dump_yaml(cfg), "config.yaml")
        (exp_dir / "config.yaml").write_text(dump_yaml(cfg))  # what benchmarks/reseed.py re-trains from
        tracking.log_file(client, parent_id, space_path(cfg.sweep.search_space))
        if self.given_outputs is not None:
            outputs = list(self.given_outputs)
        else:
            outputs = [path for teacher in teachers for path in self._teacher_outputs(teacher)]
        ctx = TrialContext(
            base=to_dict(cfg), teachers=teachers, teacher_outputs=outputs, storage_path=str(exp_dir),
            tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id,
        )
        print(f"sweep '{exp_dir.name}': {cfg.sweep.num_samples} trials, MLflow experiment "
              f"'{cfg.tracking.experiment or cfg.name}' (parent run {parent_id})", flush=True)
        results = self._tune(ctx, exp_dir)
        self._finish(client, parent_id, teachers, results, ctx, exp_dir, state, uri, start)

    # ------------------------------------------------------------------ steps

    def _local_cpus(self) -> int | None:
        if self.cfg.ray.num_cpus:
            return self.cfg.ray.num_cpus
        return max(os.cpu_count() or 1, int(self.plan.trial_cpu))

    def _experiment_dir(self) -> tuple[Path, dict]:
        """A fresh ``<storage>/<name>-<time>`` folder, or the one being resumed (with its saved state)."""
        latest = self.storage / f"{self.cfg.name}.latest"
        if self.resume:
            path = Path(latest.read_text().strip()) if self.resume == "latest" and latest.is_file() else Path(self.resume)
            if self.resume == "latest" and not latest.is_file():
                raise FileNotFoundError(f"no earlier sweep named '{self.cfg.name}' under {self.storage} to resume")
            state_file = path / STATE_FILE
            if not state_file.is_file():
                raise FileNotFoundError(f"{path} is not a sweep folder of this tool (no {STATE_FILE}); nothing to resume")
            return path.resolve(), json.loads(state_file.read_text())
        path = self.storage / f"{self.cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        path.mkdir(parents=True, exist_ok=False)
        latest.write_text(str(path))
        return path, {}

    def _teacher_outputs(self, teacher: str) -> list[str]:
        """Precompute, once, the teacher outputs every objective the space can choose reads, on the un-augmented
        train split (cached by content across sweeps); none when the teacher must run live."""
        cfg = self.cfg
        configs = possible_configs(self.plan.space, cfg)
        needs = registry.Needs()
        for c in configs:
            needs = needs | registry.teacher_needs(c.distill)
        live = cfg.data.augment or not cfg.teacher.cache_outputs or not all(registry.cacheable(c.distill) for c in configs)
        if live or not needs.teacher:
            return []
        return [str(teacher_outputs_file(teacher, cfg, self.data, needs))]

    def _tune(self, ctx: TrialContext, exp_dir: Path) -> tune.ResultGrid:
        cfg, plan = self.cfg, self.plan
        trainable = self._trainable(run_trial, ctx)
        if self.resume and tune.Tuner.can_restore(str(exp_dir)):
            return tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                      resume_errored=True).fit()
        concurrency = self._concurrency()
        print(f"running up to {concurrency} trial(s) at once ({plan.mode_text})", flush=True)
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=tpe_startup_trials(cfg.sweep))
        points = [p.params for p in self.points]
        if points:
            print("first trials: the paper defaults\n" + "\n".join(f"  {p.describe()}" for p in self.points), flush=True)
        searcher = OptunaSearch(
            space=plan.space.define_by_run(cfg), metric=cfg.sweep.metric, mode=cfg.sweep.mode, sampler=sampler,
            points_to_evaluate=points or None,
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.train.epochs + 1,  # must exceed the number of reports (NOTES-ray pitfall 4)
            grace_period=asha_grace(cfg),
            reduction_factor=cfg.sweep.asha.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, metric=cfg.sweep.metric, mode=cfg.sweep.mode,
                num_samples=cfg.sweep.num_samples, max_concurrent_trials=concurrency,
                reuse_actors=in_process(cfg),
            ),
            run_config=self._run_config(
                exp_dir, ProgressPrinter(cfg.sweep.metric, cfg.sweep.mode, cfg.train.epochs, cfg.sweep.num_samples)),
        )
        return tuner.fit()

    def _finish(self, client, parent_id, teachers, results, ctx: TrialContext, exp_dir: Path, state: dict,
                uri: str, start: float) -> None:
        cfg, data = self.cfg, self.data
        metric, mode = cfg.sweep.metric, cfg.sweep.mode
        summaries = summarise(results, metric, mode, cfg.train.epochs, sampled_keys(self.plan.space))
        frame = to_frame(summaries, metric, mode, self.points)
        csv = exp_dir / "leaderboard.csv"
        frame.to_csv(csv)
        tracking.log_file(client, parent_id, csv)
        best = best_summary(summaries, metric, mode)
        print("\n== Leaderboard (by %s on the search seeds %s; test set not used) ==" % (metric, search_seeds(cfg)))
        print(frame.to_string(float_format=lambda v: f"{v:.4g}") if not frame.empty else "(no trial reported)")
        if best is None:
            raise SweepError(
                "no trial finished an epoch; each failed trial's reason is in its MLflow run's orchestrator.error tag"
            )
        teacher_test = max(
            (evaluate_model(load_teacher(t, data.num_classes, data.in_channels, data.image_size), data.test,
                            cfg.data.eval_batch_size) for t in teachers),
            key=lambda m: m["acc1"],
        )["acc1"]  # several teachers: the best single one
        verdict = self._confirm(client, parent_id, summaries, ctx, exp_dir, state)
        chosen = verdict.chosen
        seed = max(chosen.checkpoints, key=lambda s: chosen.val[s])  # the chosen config's best seed on validation
        student_path = Path(chosen.checkpoints[seed]) / (
            STUDENT_FILE if verdict.confirmed else student_file(seed, search_seeds(cfg)))
        student = load_model_checkpoint(student_path, data.num_classes, data.in_channels)

        test_mean, test_sd = mean_sd(list(chosen.test.values()))
        alone_mean = mean_sd(list(chosen.alone.test.values()))[0] if chosen.alone and chosen.alone.test else None
        summary = {
            "best_trial": chosen.trial, f"best_{metric}": chosen.search_value, "best_params": chosen.params,
            "space_fixed": self.plan.space.fixed,  # the space's constants: the chosen config = these + best_params
            "registered_seed": seed, "test/acc1": chosen.test[seed], "test/acc1_mean": test_mean, "test/acc1_sd": test_sd,
            "teacher/test_acc1": teacher_test, "student_alone/test_acc1": alone_mean, **verdict.as_dict(),
        }
        tracking.log_metrics(client, parent_id, _numbers(summary, verdict), step=0)
        best_run = [r for r in tracking.child_runs(client, client.get_run(parent_id).info.experiment_id, parent_id)
                    if r.data.tags.get("trial_number") == str(chosen.trial)]
        if best_run:
            tracking.set_tags(client, best_run[0].info.run_id, {"orchestrator.best": "true"})
        (exp_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracking.log_file(client, parent_id, exp_dir / "summary.json")
        tracking.log_file(client, parent_id, confirm.plot(verdict, exp_dir / "confirm.png"))
        shutil.copy(student_path, exp_dir / "best_student.pt")
        tracking.log_file(client, parent_id, exp_dir / "best_student.pt")
        version = tracking.log_model(parent_id, student, "best_student", cfg.tracking.registered_model,
                                     example=example_batch(data))
        if version:
            tracking.tag_model_version(client, cfg.tracking.registered_model, version, _version_tags(summary, verdict))
        export_student(student, data, cfg.export.formats, exp_dir / "export", client, cfg.tracking.registered_model, version)
        label = cfg.model.teacher if not self.teachers or len(self.teachers) == 1 else f"best of {len(self.teachers)} teachers"
        print("\n" + confirm.table(verdict, label, teacher_test))
        print("\n" + confirm.conclusion(verdict))
        self._print_summary(chosen, seed, version, parent_id, exp_dir, uri, start)

    def _confirm(self, client, parent_id, summaries, ctx: TrialContext, exp_dir: Path, state: dict) -> confirm.Verdict:
        """Re-train the best configs (+ best paper default + student alone) on fresh seeds; or, with
        ``sweep.confirm.top_k=0``, test the best trial's students and train the student alone on the search seeds."""
        cfg = self.cfg
        metric, mode, top_k = cfg.sweep.metric, cfg.sweep.mode, cfg.sweep.confirm.top_k
        confirmed = top_k > 0
        seeds = confirm_seeds(cfg) if confirmed else search_seeds(cfg)
        cands = confirm.candidates(summaries, self.points if confirmed else [], max(top_k, 1), metric, mode,
                                   cfg.sweep.baseline)
        if not confirmed:  # the best trial as it was: its students, one per search seed
            best = cands[0]
            row = next(s for s in summaries if s.number == best.trial)
            for s in seeds:
                best.val[s] = row.best.get(f"seed{s}/{metric}", row.best[metric])
                path = Path(row.checkpoint_dir) / student_file(s, seeds)
                model = load_model_checkpoint(path, self.data.num_classes, self.data.in_channels)
                best.test[s] = evaluate_model(model, self.data.test, cfg.data.eval_batch_size)["acc1"]
                best.checkpoints[s] = row.checkpoint_dir
        stage = "confirm" if confirmed else "baseline"
        to_train = [c for c in cands if confirmed or c.role == "alone"]
        self._train_stage(client, parent_id, stage, to_train, seeds, ctx, exp_dir, state)
        try:
            verdict = confirm.decide(cands, seeds, cfg.sweep.confirm.level, confirmed)
            if cfg.sweep.baseline and verdict.chosen.alone is None:  # candidates differ in optimiser settings
                cands.append(confirm.alone_for([verdict.chosen]))
                self._train_stage(client, parent_id, f"{stage}-alone", cands[-1:], seeds, ctx, exp_dir, state)
                verdict = confirm.decide(cands, seeds, cfg.sweep.confirm.level, confirmed)
        except ValueError as exc:
            raise SweepError(f"{exc}; see the {stage} stage's MLflow runs") from exc
        if f"{stage}_run_id" in state:
            tracking.log_metrics(client, state[f"{stage}_run_id"], _numbers({}, verdict), step=0)
        return verdict

    def _train_stage(self, client, parent_id, stage: str, cands: list[confirm.Candidate], seeds: list[int],
                     ctx: TrialContext, exp_dir: Path, state: dict) -> None:
        """Train ``cands`` x ``seeds`` as the nested MLflow stage run ``stage`` (its id kept for --resume)."""
        if not cands:
            return
        fixed = "".join(f", {k}={_fmt(v)}" for k, v in self.plan.space.fixed.items())
        print(f"\n== {stage}: {len(cands)} config(s) x seeds {seeds}{' (all with' + fixed[1:] + ')' if fixed else ''} ==\n" +
              "\n".join(f"  {c.label}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in c.overrides.items()) for c in cands),
              flush=True)
        stage_id = state.get(f"{stage}_run_id") or tracking.start_run(
            client, client.get_run(parent_id).info.experiment_id, stage, "stage", parent_id=parent_id,
            tags={"stage": stage, "seeds": json.dumps(seeds)},
        )
        state[f"{stage}_run_id"] = stage_id
        _write_json(exp_dir / STATE_FILE, state)
        with tracking.run_scope(client, stage_id, close_children=True):
            if not cluster.wait_for_free({"CPU": self.plan.trial_cpu, "GPU": self.plan.trial_gpu}):
                print("warning: the search's stopped trials still hold their resources after 3 minutes", file=sys.stderr)
            results = self._run_jobs(confirm.jobs(cands, seeds, self.plan.space.fixed), replace(ctx, parent_run_id=stage_id), exp_dir / stage)
            failed = confirm.collect(results, cands)
            if failed:
                print(f"warning: {len(failed)} {stage} run(s) failed: {', '.join(failed)}", file=sys.stderr)

    def _trainable(self, fn, ctx: TrialContext):
        """``fn`` (run_trial or run_job) with the sweep's context and one trial's resources for Tune."""
        cfg, plan = self.cfg, self.plan
        resources = {"cpu": plan.trial_cpu if in_process(cfg) else 1}
        if in_process(cfg) and plan.trial_gpu:
            resources["gpu"] = plan.trial_gpu
        return tune.with_resources(tune.with_parameters(fn, ctx=ctx), resources)

    def _concurrency(self) -> int:
        plan = self.plan
        return self.cfg.sweep.max_concurrent or cluster.max_concurrency({"CPU": plan.trial_cpu, "GPU": plan.trial_gpu})

    def _run_config(self, folder: Path, printer: tune.Callback) -> tune.RunConfig:
        """Tune's run config for the trials or a stage: storage ``folder``, one progress printer, the
        failure budget and checkpoint retention of ``train.*``."""
        cfg = self.cfg
        return tune.RunConfig(
            name=folder.name, storage_path=str(folder.parent), verbose=0, callbacks=[printer],
            # In-process trials are restarted by Tune, worker groups by Train (trial.py): same budget.
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures if in_process(cfg) else 0,
                                              fail_fast=False),
            checkpoint_config=checkpoint_config(cfg, tune.CheckpointConfig),
        )

    def _run_jobs(self, jobs: list[dict], ctx: TrialContext, folder: Path) -> tune.ResultGrid:
        """The jobs as one Tune grid of Ray Train runs, as many at once as the cluster fits."""
        cfg = self.cfg
        trainable = self._trainable(run_job, ctx)
        if self.resume and tune.Tuner.can_restore(str(folder)):
            return tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                      resume_errored=True).fit()
        concurrency = self._concurrency()
        tuner = tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(jobs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=in_process(cfg)),
            run_config=self._run_config(folder, confirm.JobPrinter(len(jobs))),
        )
        return tuner.fit()

    def _report(self, client, parent_id: str, exp_dir: Path) -> None:
        """The compare report (tables, plots) of this sweep, logged under the parent's ``report/``."""
        from orchestrator.report.write import write_report

        try:
            report = write_report(client, [parent_id], exp_dir / "report", log_to=parent_id)
            print(f"Report: {report.html}  (plots: {len(report.plots)})")
        except Exception as exc:  # noqa: BLE001 - a report must not fail a finished sweep
            print(f"warning: report not written ({exc})", file=sys.stderr)

    def _print_summary(self, chosen: confirm.Candidate, seed: int, version, parent_id, exp_dir, uri, start) -> None:
        cfg = self.cfg
        params = "  ".join(f"{k}={_fmt(v)}" for k, v in chosen.params.items())
        print(f"\nChosen config: {chosen.label}\n  {params}")
        print(f"\nMLflow: experiment '{cfg.tracking.experiment or cfg.name}', parent run {parent_id}")
        if version:
            print(f"  registered model: {cfg.tracking.registered_model} version {version} "
                  f"(the chosen config's student of seed {seed}, its best on validation)")
        print(f"  browse: {tracking.ui_command(uri)}")
        print(f"Results: {exp_dir}  (leaderboard.csv, summary.json, confirm.png, best_student.pt)")
        s = int(time.perf_counter() - start)
        print(f"Sweep time: {s // 60}m{s % 60:02d}s")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _numbers(summary: dict, verdict: confirm.Verdict) -> dict[str, float]:
    """The headline numbers as MLflow metrics (means, sds, gains and interval bounds)."""
    out = {k: v for k, v in summary.items() if k.startswith(("test/", "teacher/", "student_alone/"))
           and isinstance(v, (int, float))}
    for c in verdict.cands:
        name = "chosen" if c is verdict.chosen else re.sub(r"[^0-9A-Za-z_.-]+", "_", c.label).strip("_")
        if c.test:
            out[f"confirm/{name}/test_acc1_mean"], out[f"confirm/{name}/test_acc1_sd"] = mean_sd(list(c.test.values()))
    for key, gain in (("gain_vs_alone", verdict.vs_alone), ("gain_vs_paper_default", verdict.vs_paper)):
        if gain is not None:
            out[f"confirm/{key}"] = gain.mean
            if gain.low is not None:
                out[f"confirm/{key}_low"], out[f"confirm/{key}_high"] = gain.low, gain.high
    return out


def _version_tags(summary: dict, verdict: confirm.Verdict) -> dict[str, str]:
    """Tags of the registered model version: the chosen config's mean, sd, gains and intervals."""
    tags = {"confirmed": str(verdict.confirmed).lower(), "config": verdict.chosen.label,
            "seeds": json.dumps(verdict.seeds), "test_acc1_mean": f"{summary['test/acc1_mean']:.6f}",
            "test_acc1_sd": f"{summary['test/acc1_sd']:.6f}", "registered_seed": str(summary["registered_seed"])}
    for key, gain in (("gain_vs_alone", verdict.vs_alone), ("gain_vs_paper_default", verdict.vs_paper)):
        if gain is not None:
            tags[key] = f"{gain.mean:.6f}"
            tags[f"{key}_interval"] = "n/a" if gain.low is None else f"[{gain.low:.6f}, {gain.high:.6f}]"
            tags[f"{key}_significant"] = str(gain.significant).lower()
    return tags


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
