"""Runs a planned sweep end to end: Ray, teacher, Tune search, confirmation stage, registration.

The search's trials share their seeds; the confirmation stage (:mod:`orchestrator.sweep.confirm.outcome`) re-trains
the best configs, the best paper default and the student alone on fresh seeds and chooses by mean
validation accuracy. Every run this opens is closed on success (FINISHED), error (FAILED) and Ctrl-C
(KILLED); trials that ASHA stopped are closed FINISHED with tag ``orchestrator.outcome=early_stopped``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import mlflow
import ray

from orchestrator.infra import cluster, storage, tracking
from orchestrator.sweep.confirm import outcome, front
from orchestrator.config.schema import dump_yaml, flatten, search_seeds, to_dict
from orchestrator.deploy.cost import cost_metrics
from orchestrator.data import DataBundle
from orchestrator.run.learner import evaluate_model
from orchestrator.sweep.leaderboard import best_summary, summarise, to_frame
from orchestrator.sweep.plan import Plan
from orchestrator.sweep.search.space import paper_points, possible_configs, sampled_keys, space_path
from orchestrator.report.stats import mean_sd
from orchestrator.sweep.confirm import confirm_stage, front_stage
from orchestrator.config import objectives
from orchestrator.sweep.search import search_stage
from orchestrator import teacher_outputs
from orchestrator.sweep.costs import measure_students, params_cost, reachable_students
from orchestrator.sweep.errors import SweepError
from orchestrator.sweep import driver_copy
from orchestrator.sweep.folder import open_folder, record_state, save_inputs
from orchestrator.config.objectives import OVER_BUDGET
from orchestrator.sweep.register import register_student
from orchestrator.sweep.summary import headline_metrics, headline_tags, print_summary
from orchestrator.sweep.trial_errors import TrialInputError, failures, quiet_trial_tracebacks, report
from orchestrator.teacher.checkpoint import TeacherCheckpointError, load_model_checkpoint, load_teacher
from orchestrator.run.alone import ensure_teacher
from orchestrator.run.worker import STUDENT_FILE, student_file
from orchestrator.sweep.trial import TrialContext


class SweepRunner:
    """``teachers``: distil from these (paths/URIs; several = an ensemble) instead of ``ensure_teacher``;
    ``teacher_outputs``: their precomputed output files (None: computed here when possible);
    ``parent_tags``: extra tags of the sweep's parent run (e.g. ``mlflow.parentRunId`` of a pipeline stage);
    ``references``: the front's reference rows (``front_stage.teacher_row``: the ensemble and each teacher, as the
    pipeline measured them) instead of the best single teacher's."""

    def __init__(
        self,
        plan: Plan,
        data: DataBundle,
        resume: str | None = None,
        *,
        teachers: list[str] | None = None,
        teacher_outputs: list[str] | None = None,
        parent_tags: dict[str, str] | None = None,
        references: list[dict] | None = None,
    ):
        self.plan, self.cfg, self.data, self.resume = plan, plan.cfg, data, resume
        self.storage = storage.local_root(self.cfg.sweep.storage_path)  # the driver's sweep folders
        self.teachers, self.given_outputs, self.parent_tags = teachers, teacher_outputs, dict(parent_tags or {})
        self.references = references
        self.front_text: str | None = None  # the printed front table, once published
        self.points = paper_points(plan.space, self.cfg) if self.cfg.sweep.paper_defaults else []

    def run(self) -> int:
        cfg, start = self.cfg, time.perf_counter()
        uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
        try:
            client = tracking.check_connection(uri)
        except tracking.TrackingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        mlflow.set_tracking_uri(uri)
        started_ray = cluster.connect(cluster.resolve_address(cfg.ray.address), self._local_cpus(), cfg.ray.ship_package)
        try:  # a sweep refused here leaves no folder and no run behind
            cluster.check_tracking(uri)
            exp_dir, state = open_folder(self.storage, cfg.name, self.resume)
            driver_copy.point_latest(exp_dir, cfg.sweep.storage_path, cfg.name)
        except (cluster.ClusterError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            if started_ray:
                ray.shutdown()
            return 2
        try:
            cluster.check_fits(
                {"CPU": self.plan.trial_cpu, "GPU": self.plan.trial_gpu},
                cfg.train.cpus_per_worker, cfg.train.use_gpu, cfg.train.num_workers,
            )
            teachers = list(self.teachers) if self.teachers else [ensure_teacher(cfg, uri)]
            experiment_id = tracking.ensure_experiment(client, cfg.tracking.experiment or cfg.name, uri)
            parent_id = state.get("parent_run_id")
            if not parent_id and self.resume:  # a state file an earlier version wrote without it
                parent_id = tracking.sweep_run_of(client, experiment_id, str(exp_dir))
            if parent_id:
                tracking.reopen_run(client, parent_id)
                left = tracking.close_runs_left_open(client, experiment_id, parent_id)
                if left:
                    print(f"resuming: {left} run(s) the stopped sweep left RUNNING closed KILLED "
                          "(outcome interrupted); the trials and stages that resume reopen theirs", flush=True)
            else:
                parent_id = tracking.start_run(
                    client, experiment_id, exp_dir.name, "sweep",
                    params=flatten(to_dict(cfg)),
                    tags={"search_space": self.plan.space.name, "storage": str(exp_dir), **self.parent_tags},
                )
            with tracking.run_scope(client, parent_id, close_children=True,
                                    on_finish=lambda: self._report(client, parent_id, exp_dir)):
                self._sweep(client, parent_id, experiment_id, teachers, exp_dir, state, uri, start)
            return 0
        except KeyboardInterrupt:
            print(f"\ninterrupted; finished trials are kept. Resume with: python -m orchestrator.sweep --resume "
                  f"{exp_dir}", file=sys.stderr)
            return 130
        except (cluster.ClusterError, TeacherCheckpointError, TrialInputError) as exc:
            print("\n".join(f"error: {line}" for line in str(exc).splitlines()), file=sys.stderr)
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
        record_state(exp_dir, state, parent_run_id=parent_id, experiment_id=experiment_id)
        tracking.log_text(client, parent_id, dump_yaml(cfg), "config.yaml")
        save_inputs(exp_dir, dump_yaml(cfg), space_path(cfg.sweep.search_space))  # what --resume restores
        driver_copy.upload(exp_dir, cfg.sweep.storage_path)  # with a storage URI, a resume needs no ./runs
        tracking.log_file(client, parent_id, space_path(cfg.sweep.search_space))
        place = storage.location(cfg.sweep.storage_path, exp_dir)  # exp_dir, or its place under a storage URI
        if self.given_outputs is not None:
            outputs = list(self.given_outputs)
        else:
            outputs = teacher_outputs.outputs_for(teachers, self.plan.cfg, possible_configs(self.plan.space, self.plan.cfg),
                                                  self.plan.max_epochs, self.data, uri, storage.inputs_uri(place))
        trial_teachers, outputs = self._share_inputs(teachers, outputs, place)
        ctx = TrialContext(
            base=to_dict(cfg), teachers=trial_teachers, teacher_outputs=outputs, storage_path=place,
            tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent_id, costs=self._student_costs(),
            data_shape=[self.data.num_classes, self.data.in_channels, self.data.image_size],
        )
        print(f"sweep '{exp_dir.name}': {cfg.sweep.num_samples} trials, MLflow experiment "
              f"'{cfg.tracking.experiment or cfg.name}' (parent run {parent_id})", flush=True)
        if self.plan.space.held:
            print(self.plan.space.held_line(), flush=True)
        with quiet_trial_tracebacks():
            results = search_stage.search(self.plan, self.points, ctx, exp_dir, bool(self.resume))
        report(failures(results), exp_dir / "errors")  # a config/data problem: TrialInputError, exit 2
        if len(results) and all((r.metrics or {}).get(OVER_BUDGET) for r in results):
            raise SweepError(f"every trial's student was over sweep.budget ({cfg.sweep.budget}), so none was trained: "
                             "more trials (sweep.num_samples) or a larger budget")
        if self.resume:
            ended = {r.metrics["trial_id"] for r in results if r.error is None and "trial_id" in (r.metrics or {})}
            tracking.finish_ended_trials(client, experiment_id, parent_id, ended, cfg.train.epochs)
        self._finish(client, parent_id, teachers, results, ctx, exp_dir, state, uri, start)

    @staticmethod
    def _share_inputs(teachers: list[str], outputs: list[str], place: str) -> tuple[list[str], list[str]]:
        """The teachers and teacher outputs as trials on any node reach them: as they are for a local storage
        folder; uploaded under a storage URI otherwise (each node downloads them once: :mod:`orchestrator.infra.storage`)."""
        shared = storage.inputs_uri(place)
        if not shared:
            return teachers, outputs
        uris, seconds, size = storage.publish_timed([*teachers, *outputs], shared)
        print(f"trial inputs (teacher, teacher outputs): {size / 2**20:.1f} MiB on this disk, in {shared} after "
              f"{seconds:.1f} s; each node downloads them once", flush=True)
        return uris[:len(teachers)], uris[len(teachers):]

    def _student_costs(self) -> dict[str, dict]:
        """Every student architecture the space can reach, measured here before any trial runs."""
        archs, continuous = reachable_students(self.plan.space, self.cfg)
        threads = self.cfg.export.latency_threads
        print(f"student costs (ONNX Runtime, {threads} intra-op thread{'s' if threads != 1 else ''}, this machine, "
              f"cached per architecture):", flush=True)
        costs = measure_students(archs, self.data, threads)
        if continuous:
            print(f"  {', '.join(continuous)}: sampled from a continuous range, so each trial measures its own "
                  "student when it starts, on its node", flush=True)
        return costs

    def _trial_cost(self, ctx: TrialContext, params: dict) -> dict[str, float]:
        """``cost/*`` metrics of the student a trial with sampled ``params`` trains."""
        return cost_metrics(params_cost(self.cfg, {**self.plan.space.fixed, **params}, ctx.costs, ctx.data_shape))

    def _point_cost(self, ctx: TrialContext, params: dict) -> dict:
        """The architecture (``arch``) and ``cost/*`` metrics of the student a trial with ``params`` trains."""
        cost = params_cost(self.cfg, {**self.plan.space.fixed, **params}, ctx.costs, ctx.data_shape)
        return {"arch": cost["arch"], **cost_metrics(cost)}

    def _front_spec(self) -> front.FrontSpec | None:
        """The front the sweep confirms (a cost objective or a budget), or None (the top-k confirmation)."""
        sw = self.cfg.sweep
        return front.spec_of(objectives.resolve(self.cfg), objectives.budget_of(self.cfg), sw.metric, sw.mode)

    def _local_cpus(self) -> int | None:
        if self.cfg.ray.num_cpus:
            return self.cfg.ray.num_cpus
        return max(os.cpu_count() or 1, int(self.plan.trial_cpu))

    def _finish(self, client, parent_id, teachers, results, ctx: TrialContext, exp_dir: Path, state: dict,
                uri: str, start: float) -> None:
        """Leaderboard, teacher test accuracy, confirmation, summary, the chosen student registered."""
        cfg, data = self.cfg, self.data
        metric, mode = cfg.sweep.metric, cfg.sweep.mode
        summaries = summarise(results, metric, mode, cfg.train.epochs, sampled_keys(self.plan.space))
        frame = to_frame(summaries, metric, mode, self.points, costs=lambda params: self._trial_cost(ctx, params))
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
        teacher_source, teacher_test = max(
            ((t, evaluate_model(load_teacher(t, data.num_classes, data.in_channels, data.image_size), data.test,
                                cfg.data.eval_batch_size)["acc1"]) for t in teachers),
            key=lambda pair: pair[1],
        )  # several teachers: the best single one
        spec = self._front_spec()
        verdict = confirm_stage.confirm_winner(client, parent_id, summaries, self.plan, data, self.points, ctx,
                                               exp_dir, state, bool(self.resume), spec,
                                               lambda params: self._trial_cost(ctx, params))
        chosen = verdict.chosen
        seed = outcome.best_seed(chosen)  # the chosen config's best seed on validation
        checkpoint = storage.local_copy(chosen.checkpoints[seed], cfg.sweep.storage_path, exp_dir / "checkpoints")
        student_path = checkpoint / (
            STUDENT_FILE if verdict.confirmed else student_file(seed, search_seeds(cfg)))
        student = load_model_checkpoint(student_path, data.num_classes, data.in_channels)

        test_mean, test_sd = mean_sd(list(chosen.test.values()))
        alone_mean = mean_sd(list(chosen.alone.test.values()))[0] if chosen.alone and chosen.alone.test else None
        summary = {
            "best_trial": chosen.trial, f"best_{metric}": chosen.search_value, "best_params": chosen.params,
            "space_fixed": self.plan.space.fixed,  # the space's constants: the chosen config = these + best_params
            "registered_seed": seed, "test/acc1": chosen.test[seed], "test/acc1_mean": test_mean, "test/acc1_sd": test_sd,
            "teacher/test_acc1": teacher_test, "student_alone/test_acc1": alone_mean, **verdict.as_dict(),
            **self._trial_cost(ctx, chosen.params),  # cost/params, cost/macs, cost/latency_ms, cost/latency_ms_b64
            **({f"student_alone/{k}": v for k, v in self._trial_cost(ctx, chosen.alone.params).items()}
               if chosen.alone else {}),
            "cost/threads": cfg.export.latency_threads,
        }
        tracking.log_metrics(client, parent_id, headline_metrics(summary, verdict), step=0)
        tracking.set_tags(client, parent_id, headline_tags(verdict, cfg.sweep.confirm.level))
        best_run = [r for r in tracking.child_runs(client, client.get_run(parent_id).info.experiment_id, parent_id)
                    if r.data.tags.get("trial_number") == str(chosen.trial)]
        if best_run:
            tracking.set_tags(client, best_run[0].info.run_id, {"orchestrator.best": "true"})
        if "registered_version" in state:  # resumed after registering: not registered twice
            version = state["registered_version"] or None
        else:
            version = register_student(client, parent_id, cfg, data, student, student_path, summary, verdict, exp_dir)
            record_state(exp_dir, state, registered_version=version or "")
            driver_copy.upload(exp_dir, cfg.sweep.storage_path)
        label = cfg.model.teacher if not self.teachers or len(self.teachers) == 1 else f"best of {len(self.teachers)} teachers"
        if spec is not None and verdict.confirmed:  # the front: each point exported, logged, registered
            cost_of = lambda params: self._point_cost(ctx, params)  # noqa: E731
            published = front_stage.published(exp_dir) if self.resume else None
            if published is not None:  # resumed after publishing: the same runs and versions, shown again
                points = front.confirmed_points(verdict.cands, spec, cost_of, cfg.sweep.confirm.level)
                summary["front"], references = published, published["references"]
            else:
                references = self.references or [front_stage.teacher_row(teacher_source, label, teacher_test, cfg, data)]
                points, summary["front"] = front_stage.publish(
                    client, parent_id, cfg, self.plan.space.fixed, data, verdict, spec, cost_of, references, version,
                    exp_dir)
                driver_copy.upload(exp_dir, cfg.sweep.storage_path)
        (exp_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracking.log_file(client, parent_id, exp_dir / "summary.json")
        tracking.log_file(client, parent_id, outcome.plot(verdict, exp_dir / "confirm.png"))
        if "front" in summary:
            self.front_text = front.table(points, spec, verdict.seeds, references)
            print("\n" + self.front_text)
            if spec.budget is not None:
                print("\n" + front.budget_line(next(p for p in points if p.cand is chosen), spec.budget))
            print(f"Front: {exp_dir / 'front.png'}; each point's student as ONNX in {exp_dir / 'front'}")
        else:
            print("\n" + outcome.table(verdict, label, teacher_test))
        print("\n" + outcome.conclusion(verdict))
        print_summary(cfg, chosen, seed, version, parent_id, exp_dir, uri, start)

    def _report(self, client, parent_id: str, exp_dir: Path) -> None:
        """The compare report (tables, plots) of this sweep, logged under the parent's ``report/``."""
        from orchestrator.report.write import write_report

        try:
            report = write_report(client, [parent_id], exp_dir / "report", log_to=parent_id)
            print(f"Report: {report.html}  (plots: {len(report.plots)})")
        except Exception as exc:  # noqa: BLE001 - a report must not fail a finished sweep
            print(f"warning: report not written ({exc})", file=sys.stderr)
