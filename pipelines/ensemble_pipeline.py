"""The ensemble pipeline's stages, run in order under one MLflow parent run (see :mod:`pipelines.ensemble`)."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import ray
import torch

from orchestrator.infra import cluster, tracking
from orchestrator.config.schema import (
    Config,
    ConfigError,
    apply_overrides,
    dump_yaml,
    flatten,
    pipeline_output_dir,
    pipeline_teachers,
    student_arch,
    to_dict,
)
from orchestrator.distill import registry
from orchestrator.report.stats import PairedGain, mean_sd, paired_gain
from orchestrator.teacher_outputs import TeacherInputs, choose
from orchestrator.teacher.checkpoint import TeacherCheckpointError
from orchestrator.run.alone import alone_config
from pipelines import comparison
from pipelines.ensemble_tasks import distill_task, teacher_eval_task
from pipelines.stages import Stages, cancel, cpu_share, files_exist, fingerprint, stage_hash, wait_with_progress
from pipelines.teacher_cost import measure_teacher_cost
from pipelines.teachers import ensure_teachers, local_cpus


def data_payload(cfg: Config) -> dict:
    d = cfg.data
    return {"dataset": d.dataset, "root": d.root, "val_fraction": d.val_fraction, "train_subset": d.train_subset,
            # "negatives": the former data.negatives, now distill.crd.negatives (kept: stage hashes unchanged)
            "augment": d.augment, "negatives": cfg.distill.crd.negatives, "seed": cfg.seed, **d.geometry_key()}


def run_payload(cfg: Config) -> dict:
    """Everything of a student run's config that changes its result."""
    return {"data": data_payload(cfg), "batch_size": cfg.data.batch_size, "student": student_arch(cfg.model),
            "distill": to_dict(cfg.distill), "train": to_dict(cfg.train), "cache_outputs": cfg.teacher.cache_outputs}


def distill_configs(cfg: Config, num_train: int) -> list[Config]:
    """Every config a distillation stage of the pipeline can train with: ``cfg``, or with ``--sweep`` or
    ``--compress`` every config of ``sweep.search_space``."""
    if not (cfg.pipeline.sweep or cfg.pipeline.compress):
        return [cfg]
    from orchestrator.sweep.search.space import load_space, possible_configs

    return possible_configs(load_space(cfg.sweep.search_space, cfg, num_train), cfg)


def seed_summary(runs: list[dict], wall_s: float) -> dict:
    """A student stage's result: its runs (one per seed, each with ``seed``), their mean ± sd and the wall time
    the stage's runs took (all students' runs go together, so it is the students' shared time)."""
    test, val = mean_sd([r["test/acc1"] for r in runs]), mean_sd([r["val/acc1"] for r in runs])
    return {"runs": runs, "seeds": [r["seed"] for r in runs], "test/acc1": test[0], "test/acc1_sd": test[1],
            "val/acc1": val[0], "val/acc1_sd": val[1], "checkpoint": runs[0]["checkpoint"],
            "time_s": mean_sd([r["time_s"] for r in runs])[0], "wall_s": wall_s,
            "teacher_inputs": "; ".join(r["teacher_inputs"] for r in runs if r.get("teacher_inputs")) or None}


def seed_values(result: dict, seed: int, key: str = "test/acc1") -> dict[int, float]:
    """seed -> ``key`` of a student stage's runs (a ``--sweep`` stage: its one run, on ``seed``)."""
    return {int(r["seed"]): r[key] for r in result["runs"]} if "runs" in result else {seed: result[key]}


class EnsemblePipeline:
    def __init__(self, cfg: Config, data, uri: str, client):
        self.cfg, self.data, self.uri, self.client = cfg, data, uri, client
        self.out = pipeline_output_dir(cfg)
        self.threads = self.cfg.train.torch_threads or self.cfg.train.cpus_per_worker

    def run(self) -> int:
        cfg, start = self.cfg, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        experiment = cfg.tracking.experiment or cfg.name
        started_ray = cluster.connect(cluster.resolve_address(cfg.ray.address), local_cpus(self.cfg), cfg.ray.ship_package)
        try:
            cluster.check_tracking(self.uri)  # several nodes: trials must reach the store
            experiment_id = tracking.ensure_experiment(self.client, experiment, self.uri)
            parent_id = tracking.start_run(
                self.client, experiment_id, f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}", "pipeline",
                params=flatten(to_dict(self.cfg)), tags={"pipeline": "ensemble", "output_dir": str(self.out)},
            )
            with tracking.run_scope(self.client, parent_id, close_children=True):
                tracking.log_text(self.client, parent_id, dump_yaml(self.cfg), "config.yaml")
                print(f"pipeline '{cfg.name}': {len(pipeline_teachers(self.cfg))} teachers -> {cfg.model.student}; MLflow "
                      f"experiment '{experiment}' (parent run {parent_id}); folder {self.out}", flush=True)
                self.stages, self.parent_id = Stages(self.client, experiment_id, parent_id, self.out), parent_id
                teachers = self.stage_teachers()
                ens = self.stage_ensemble_eval(teachers)
                if cfg.pipeline.compress:
                    self.finish_compress(self.stage_compress(ens), teachers, ens, start)
                    return 0
                students = self.stage_students(ens)
                frame = self.stage_compare(teachers, ens, students)
                self.finish(frame, teachers, ens, students, start)
            return 0
        except KeyboardInterrupt:
            print("\ninterrupted; finished stages are reused by the next run", file=sys.stderr)
            return 130
        except (TeacherCheckpointError, cluster.ClusterError, ConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if started_ray:
                ray.shutdown()

    # ------------------------------------------------------------------ 1 teachers

    def stage_teachers(self) -> dict:
        from pipelines.teachers import teacher_key

        base = self.cfg
        payload = [
            {"name": t.name, "checkpoint": t.checkpoint, "arch": t.state_dict_arch, "normalize": base.teacher.normalize}
            if t.checkpoint
            else {"name": t.name, "arch": t.arch, "key": teacher_key(base, t)}
            for t in pipeline_teachers(self.cfg)
        ]
        digest = stage_hash({"teachers": payload, "data": data_payload(base)})
        def still_valid(r: dict) -> bool:  # every checkpoint still there and unchanged
            return all(fingerprint(t["source"]) == t.get("fingerprint") for t in r["teachers"])

        result = self.stages.lookup("teachers", digest, still_valid)
        if result is not None:
            self.stages.reuse("teachers", digest, result, self._teacher_metrics(result))
            return {**result, "hash": digest}
        with self.stages.run("teachers", digest, {"teachers": json.dumps(payload)}) as run_id:
            started = time.perf_counter()
            entries = ensure_teachers(self.cfg, self.uri, self.client, self.stages.experiment_id, run_id, self.data)
            for entry in entries:
                entry["fingerprint"] = fingerprint(entry["source"])
            result = {"teachers": entries, "wall_s": time.perf_counter() - started}
            result = self.stages.complete("teachers", digest, run_id, result, self._teacher_metrics(result))
        return {**result, "hash": digest}

    @staticmethod
    def _teacher_metrics(result: dict) -> dict:
        out = {"time/wall_s": result["wall_s"]} if "wall_s" in result else {}
        for i, t in enumerate(result["teachers"]):
            if t.get("test/acc1") is not None:
                out[f"teacher{i}/test_acc1"] = t["test/acc1"]
        return out

    # ------------------------------------------------------------------ 2 ensemble evaluation

    def stage_ensemble_eval(self, teachers: dict) -> dict:
        cfg, data = self.cfg, self.data
        cache = cfg.teacher.cache_outputs and not cfg.data.augment and registry.cacheable(cfg.distill)
        teacher_ids = [t["fingerprint"] for t in teachers["teachers"]]  # a retrained teacher changes the hash
        digest = stage_hash({"teachers": teachers["hash"], "ids": teacher_ids, "data": data_payload(cfg), "cache": cache,
                             "batch_size": cfg.data.batch_size, "student": student_arch(cfg.model), "threads": self.threads})
        result = self.stages.lookup("ensemble_eval", digest, lambda r: files_exist(t["outputs"] for t in r["teachers"]))
        if result is not None:
            self.stages.reuse("ensemble_eval", digest, result, self._ensemble_metrics(result))
            return {**result, "hash": digest}
        pending, started = {}, time.perf_counter()
        with self.stages.run("ensemble_eval", digest) as run_id:
            try:
                sources = [t["source"] for t in teachers["teachers"]]
                at_once = cfg.pipeline.max_concurrent
                task = teacher_eval_task.options(num_cpus=cpu_share(len(sources), at_once))
                queued = [(t["name"], functools.partial(task.remote, source, to_dict(cfg), cache, self.threads))
                          for t, source in zip(teachers["teachers"], sources)]
                results = wait_with_progress(pending, self.client, {}, {}, queued=queued, at_once=at_once)
                pending = {}
                for name, res in results.items():
                    if isinstance(res, BaseException):
                        raise RuntimeError(f"evaluating teacher {name} failed: {res}") from res
                val_labels, test_labels = data.val.labels, data.test.labels
                rows = []
                for t in teachers["teachers"]:
                    res = results[t["name"]]
                    path = res["outputs"]  # keyed by the teacher's content, shared with the sweep
                    rows.append({"name": t["name"], "source": t["source"], "outputs": path,
                                 "val/acc1": comparison.accuracy(res["val_logits"], val_labels),
                                 "test/acc1": comparison.accuracy(res["test_logits"], test_labels),
                                 "outputs_s": res["outputs_s"] if res["computed"] else None})
                    if res["computed"]:
                        print(f"  {t['name']}: outputs on {len(data.train_eval)} training images computed once "
                              f"({res['outputs_s']:.1f} s) -> {path}", flush=True)
                ensemble = {
                    "val/acc1": comparison.accuracy(comparison.ensemble_probs([results[t['name']]['val_logits'] for t in rows]), val_labels),
                    "test/acc1": comparison.accuracy(comparison.ensemble_probs([results[t['name']]['test_logits'] for t in rows]), test_labels),
                }
                best = max(rows, key=lambda r: r["val/acc1"])  # chosen on val, never on test
                cost = self._measure_cost(rows)
                result = {"teachers": rows, "ensemble": ensemble, "best_teacher": best["name"], "cost": cost,
                          "wall_s": time.perf_counter() - started}
                for r in rows:
                    print(f"  {r['name']:<26} val/acc1 {r['val/acc1']:.4f}  test/acc1 {r['test/acc1']:.4f}", flush=True)
                print(f"  {'ensemble (mean softmax)':<26} val/acc1 {ensemble['val/acc1']:.4f}  test/acc1 "
                      f"{ensemble['test/acc1']:.4f}   best single teacher (val): {best['name']}", flush=True)
                self._print_cost(cost)
                result = self.stages.complete("ensemble_eval", digest, run_id, result, self._ensemble_metrics(result))
            except BaseException:
                cancel(pending)
                raise
        return {**result, "hash": digest}

    def _measure_cost(self, rows: list[dict]) -> dict:
        from orchestrator.teacher.checkpoint import load_teacher
        from orchestrator.teacher_outputs import CachedTeacherOutputs

        d = self.data
        models = [load_teacher(r["source"], d.num_classes, d.in_channels, d.image_size) for r in rows]
        caches = [CachedTeacherOutputs.load(r["outputs"]) for r in rows if r["outputs"]]
        return measure_teacher_cost(models, caches, d, self.cfg, self.threads)

    @staticmethod
    def _print_cost(cost: dict) -> None:
        line = (f"  teacher inference per training step (batch {cost['batch_size']}, {cost['threads']} thread(s)): "
                f"live {cost['live_ms_per_batch']:.1f} ms for all teachers")
        if "cached_ms_per_batch" in cost:
            line += (f", cached {cost['cached_ms_per_batch']:.3f} ms ({cost['speedup']:.0f}x less); "
                     f"per epoch of {cost['steps_per_epoch']} steps: {cost['live_s_per_epoch']:.1f} s -> "
                     f"{cost['cached_s_per_epoch']:.2f} s")
        print(line + f"; the student's own step: {cost['student_step_ms']:.1f} ms", flush=True)

    @staticmethod
    def _ensemble_metrics(result: dict) -> dict:
        out = {f"teacher{i}/{k.replace('/', '_')}": r[k] for i, r in enumerate(result["teachers"]) for k in ("val/acc1", "test/acc1")}
        out.update({f"ensemble/{k.replace('/', '_')}": v for k, v in result["ensemble"].items()})
        if "wall_s" in result:
            out["time/wall_s"] = result["wall_s"]
        cost = result["cost"]
        for key in ("live_ms_per_batch", "cached_ms_per_batch", "student_step_ms", "live_s_per_epoch", "cached_s_per_epoch"):
            if key in cost:
                out[f"cost/teacher_{key}" if "student" not in key else f"cost/{key}"] = cost[key]
        return out

    # ------------------------------------------------------------------ 3 students

    def stage_students(self, ens: dict) -> dict:
        """The three students: each a stage run with one child run (kind ``student``) per training seed of
        ``pipeline.seeds``, all on the pipeline's split. A stage's hash includes its seeds, a child's its seed:
        a rerun with one more seed reuses every other child. Returns stage -> result with ``runs`` (one per seed)
        and their means (``test/acc1``, ``test/acc1_sd``, ...)."""
        cfg = self.cfg
        by_name = {t["name"]: t for t in ens["teachers"]}
        best = by_name[ens["best_teacher"]]
        all_sources = [t["source"] for t in ens["teachers"]]
        all_outputs = [t["outputs"] for t in ens["teachers"] if t["outputs"]]
        results: dict[str, dict] = {}

        if self.cfg.pipeline.sweep:
            results["distill_ensemble"] = self._sweep_stage(ens, all_sources, all_outputs)
            tuned = results["distill_ensemble"]["best_params"]
            distill_cfg = apply_overrides(cfg, tuned)
        else:
            distill_cfg = cfg
        alone_cfg = alone_config(cfg, student_arch(cfg.model), cfg.train.epochs, cfg.train.lr, weights=cfg.model.student_weights)
        plan = {
            "distill_ensemble": (distill_cfg, all_sources, all_outputs, {"ensemble": ens["hash"]}),
            "distill_best_teacher": (distill_cfg, [best["source"]], [best["outputs"]] if best["outputs"] else [],
                                     {"ensemble": ens["hash"], "teacher": best["name"]}),
            "student_alone": (alone_cfg, [], [], {}),
        }
        if self.cfg.pipeline.sweep:
            plan.pop("distill_ensemble")
            plan["distill_best_teacher"][3]["tuned"] = results["distill_ensemble"]["best_params"]

        seeds = cfg.pipeline.student_seeds(cfg.seed)
        opened: dict[str, tuple[str, dict]] = {}  # stage -> (its hash, its payload without seeds)
        for stage, (run_cfg, sources, outputs, extra) in plan.items():
            payload = {**extra, "run": run_payload(run_cfg)}  # run_cfg.seed: the split's seed
            if sources and self._inputs_for(run_cfg).kind == "views":  # fp16 (top-k) teacher outputs: other results
                payload["views"] = {"topk": run_cfg.teacher.view_topk}
            digest = stage_hash({**payload, "seeds": seeds})
            found = self.stages.lookup(stage, digest, lambda r: files_exist(x["checkpoint"] for x in r["runs"]))
            if found is not None:
                run_id = self.stages.reuse(stage, digest, found, self._student_metrics(found))
                if found.get("teacher_inputs"):
                    tracking.set_tags(self.client, run_id, {"teacher_inputs": found["teacher_inputs"]})
                results[stage] = found
                continue
            opened[stage] = (digest, payload)

        todo, pending, runs, epochs, stage_runs = {}, {}, {}, {}, {}
        per_seed: dict[str, dict[int, dict]] = {stage: {} for stage in opened}
        started = time.perf_counter()
        with contextlib.ExitStack() as scopes:  # runs not closed below (interrupted, failed) end here
            try:
                for stage, (digest, payload) in opened.items():
                    run_cfg = plan[stage][0]
                    stage_runs[stage] = scopes.enter_context(self.stages.scope(self.stages.begin(
                        stage, digest, {**flatten(to_dict(run_cfg)), "seeds": json.dumps(seeds)})))
                    for seed in seeds:
                        label, child = f"{stage}-seed{seed}", stage_hash({**payload, "train_seed": seed})
                        found = self.stages.lookup(label, child, lambda r: files_exist([r["checkpoint"]]), kind="student")
                        if found is not None:
                            run_id = self.stages.reuse(label, child, found, self._student_metrics(found),
                                                       kind="student", parent_id=stage_runs[stage])
                            if found.get("teacher_inputs"):
                                tracking.set_tags(self.client, run_id, {"teacher_inputs": found["teacher_inputs"]})
                            per_seed[stage][seed] = found
                        else:
                            todo[label] = (stage, seed, child, replace(run_cfg, seed=seed))
                views = self._build_views({label: (seed_cfg, plan[stage][1]) for label, (stage, _, _, seed_cfg) in todo.items()})
                at_once, queued = cfg.pipeline.max_concurrent, []
                task = distill_task.options(num_cpus=cpu_share(len(todo), at_once)) if todo else distill_task
                for label, (stage, seed, child, seed_cfg) in todo.items():
                    sources, outputs = plan[stage][1], views.get(label, plan[stage][2])
                    run_id = scopes.enter_context(self.stages.scope(self.stages.begin(
                        label, child, {**flatten(to_dict(seed_cfg)), "data_seed": cfg.seed}, kind="student",
                        parent_id=stage_runs[stage])))
                    tracking.set_tags(self.client, run_id, {"seed": str(seed)})
                    checkpoint = str(self.out / "students" / f"{label}-{child}.pt")
                    register = cfg.tracking.registered_model if stage == "distill_ensemble" and seed == seeds[0] else None
                    queued.append((label, functools.partial(task.remote, to_dict(seed_cfg), sources, outputs, checkpoint,
                                                            self.uri, run_id, register, cfg.seed)))
                    runs[label], epochs[label] = run_id, seed_cfg.train.epochs
                if queued:
                    limit = f"at most {at_once} at once" if at_once and at_once < len(queued) else "concurrently"
                    print(f"training {len(queued)} student run(s) {limit} ({len(seeds)} seed(s) each): "
                          f"{', '.join(runs)}", flush=True)
                done = wait_with_progress(pending, self.client, runs, epochs, queued=queued, at_once=at_once)
            except BaseException:
                cancel(pending)
                raise
            failed = []
            for label, res in done.items():
                if isinstance(res, BaseException):
                    self.stages.fail(runs[label], res)
                    failed.append((label, res))
                    continue
                if res.get("teacher_inputs"):
                    print(f"  {label}: teacher inputs: {res['teacher_inputs']}", flush=True)
                stage, seed, child, _ = todo[label]
                # val/test accuracies are already in the run (per epoch, and test once at the last step)
                extra = {k: v for k, v in self._student_metrics(res).items() if not k.startswith(("val/", "test/"))}
                with self.stages.scope(runs[label]):
                    per_seed[stage][seed] = self.stages.complete(label, child, runs[label], res, extra)
            if failed:
                label, exc = failed[0]
                raise RuntimeError(f"student run {label} failed: {exc}") from exc
            wall_s = time.perf_counter() - started
            for stage, (digest, _) in opened.items():
                result = seed_summary([{"seed": s, **{k: v for k, v in per_seed[stage][s].items() if k != "_run_id"}}
                                       for s in seeds], wall_s)
                with self.stages.scope(stage_runs[stage]):
                    if result["teacher_inputs"]:
                        tracking.set_tags(self.client, stage_runs[stage], {"teacher_inputs": result["teacher_inputs"]})
                    results[stage] = self.stages.complete(stage, digest, stage_runs[stage], result,
                                                          self._student_metrics(result))
        return results

    def _inputs_for(self, run_cfg: Config) -> TeacherInputs:
        """What a distillation run of the pipeline reads from its teachers (``teacher_inputs.choose``); with views,
        the fields every run of the pipeline may read (with ``--sweep``, every config of its space), so that one
        view cache per teacher and seed serves them all."""
        own = choose(run_cfg, [run_cfg])
        if own.kind != "views":
            return own
        shared = self._pipeline_inputs
        needs = shared.needs if shared.kind == "views" else own.needs
        return replace(own, needs=needs, seeds=(run_cfg.seed,))

    @functools.cached_property
    def _pipeline_inputs(self) -> TeacherInputs:
        """``choose`` over every config a distillation run of this pipeline can train with."""
        return choose(self.cfg, distill_configs(self.cfg, len(self.data.train)))

    def _build_views(self, runs: dict[str, tuple[Config, list[str]]]) -> dict[str, list[str]]:
        """stage -> its teachers' view caches (``data.augment``), for the runs (stage -> (config, teachers)) that
        read them: built once per teacher and seed by ``sweep.teacher_outputs.shared_views`` (one Ray task per
        teacher, on a GPU if the cluster has one; found in the cache when an earlier stage or sweep built them)."""
        from orchestrator.teacher_outputs import shared_views

        wanted: dict[int, tuple[TeacherInputs, dict[str, None]]] = {}  # seed -> (inputs, teachers in order)
        for run_cfg, sources in runs.values():
            inputs = self._inputs_for(run_cfg)
            if sources and inputs.kind == "views":
                wanted.setdefault(run_cfg.seed, (inputs, {}))[1].update(dict.fromkeys(sources))
        folders: dict[tuple[str, int], str] = {}
        for seed, (inputs, teachers) in wanted.items():
            built = shared_views(list(teachers), self.cfg, self.data, inputs, self.uri, "each distillation stage")
            folders.update({(t, seed): f for t, f in zip(teachers, built)})  # []: too large, the teachers run live
        return {stage: [folders[(t, run_cfg.seed)] for t in sources]
                for stage, (run_cfg, sources) in runs.items()
                if sources and all((t, run_cfg.seed) in folders for t in sources)}

    def stage_compress(self, ens: dict) -> dict:
        """``--compress``: the compression search with the ensemble as teacher (the sweep stage, with the
        ensemble and each teacher as the front's reference rows); its result holds the front."""
        from pipelines.compress_mode import reference_rows

        sources = [t["source"] for t in ens["teachers"]]
        outputs = [t["outputs"] for t in ens["teachers"] if t["outputs"]]
        return self._sweep_stage(ens, sources, outputs, "compress", reference_rows(ens, self.cfg, self.data))

    def finish_compress(self, result: dict, teachers: dict, ens: dict, start: float) -> None:
        """``--compress``'s summary: the front (as the sweep printed it) and the reference rows in
        ``summary.json`` and the parent run; where the front's files are."""
        elapsed = time.perf_counter() - start
        walls = {"teachers": teachers.get("wall_s"), "ensemble_eval": ens.get("wall_s"), "compress": result.get("wall_s")}
        walls = {k: v for k, v in walls.items() if v is not None}
        front = result["front"]
        metrics = {"ensemble/test_acc1": ens["ensemble"]["test/acc1"], "time/pipeline_s": elapsed,
                   **{f"time/{k}_wall_s": v for k, v in walls.items()},
                   **{f"front/{i}/test_acc1_mean": p["test_mean"] for i, p in enumerate(front["points"], 1)}}
        tracking.log_metrics(self.client, self.parent_id, metrics, step=0)
        summary = {"stages_reused": self.stages.reused, "stages_run": self.stages.ran, **metrics, "wall_s": walls,
                   "sweep_dir": result["sweep_dir"], "front": front}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracking.log_file(self.client, self.parent_id, self.out / "summary.json")
        if "compress" in self.stages.reused:  # the sweep did not run now: show its front again
            print("\n" + result["front_table"])
        print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
        print(f"Front: {front['plot']}; each point's student as ONNX in {Path(result['sweep_dir']) / 'front'}")
        print(f"Results: {self.out}  (summary.json; the sweep's folder {result['sweep_dir']})")
        s = int(elapsed)
        print(f"Pipeline time: {s // 60}m{s % 60:02d}s")

    def _sweep_stage(self, ens: dict, sources: list[str], outputs: list[str], stage: str = "distill_ensemble",
                     references: list[dict] | None = None) -> dict:
        """``stage`` through the sweep machinery (SweepRunner) over ``sweep.search_space``: distill_ensemble
        (``--sweep``: its students alone are a stage of their own), or compress (``references``: the front's
        reference rows; each front point confirmed with its architecture alone)."""
        from orchestrator.sweep.run import SweepRunner
        from orchestrator.sweep.search.space import space_path
        from orchestrator.sweep.plan import make_plan

        alone = {} if self.cfg.pipeline.compress else {"sweep.baseline": False}
        cfg = apply_overrides(self.cfg, {"sweep.storage_path": str(self.out / "sweep"), "tracking.uri": self.uri,
                                         **alone})
        space_text = space_path(cfg.sweep.search_space).read_text()
        payload = {"ensemble": ens["hash"], "run": run_payload(cfg), "space": space_text, "sweep": to_dict(cfg.sweep)}
        payload["sweep"].pop("storage_path", None)
        if self._pipeline_inputs.kind == "views":  # as for the single runs: fp16 (top-k) teacher outputs
            payload["views"] = {"topk": cfg.teacher.view_topk}
        digest = stage_hash(payload)
        found = self.stages.lookup(stage, digest, lambda r: files_exist([r["checkpoint"]]))
        if found is not None:
            self.stages.reuse(stage, digest, found, self._student_metrics(found))
            return found
        with self.stages.run(stage, digest, {**flatten(to_dict(cfg)), "search_space_file": space_text[:5000]}) as run_id:
            started = time.perf_counter()
            plan = make_plan(cfg, len(self.data.train))
            given = None if cfg.data.augment else outputs  # augmented: the sweep builds (or finds) its view caches
            runner = SweepRunner(plan, self.data, teachers=sources, teacher_outputs=given,
                                 parent_tags={tracking.PARENT: run_id}, references=references)
            code = runner.run()
            if code != 0:
                raise KeyboardInterrupt() if code == 130 else RuntimeError(f"the ensemble sweep ended with code {code}")
            latest = Path(cfg.sweep.storage_path) / f"{cfg.name}.latest"
            exp_dir = Path(latest.read_text().strip())
            summary = json.loads((exp_dir / "summary.json").read_text())
            result = {
                "val/acc1": summary[f"best_{cfg.sweep.metric}"], "test/acc1": summary["test/acc1"],
                "checkpoint": str(exp_dir / "best_student.pt"), "best_params": summary["best_params"],
                "sweep_dir": str(exp_dir), "best_trial": summary["best_trial"], "wall_s": time.perf_counter() - started,
            }
            if "front" in summary:  # compress: the confirmed front, kept to show again when the stage is reused
                result["front"], result["front_table"] = summary["front"], runner.front_text
            return self.stages.complete(stage, digest, run_id, result, self._student_metrics(result))

    @staticmethod
    def _student_metrics(result: dict) -> dict:
        names = {"val/acc1": "val/acc1", "test/acc1": "test/acc1", "test/acc5": "test/acc5", "time_s": "time/stage_s",
                 "epoch_s": "time/epoch_s", "train_img_s": "throughput/train_img_s", "test/acc1_sd": "test/acc1_sd",
                 "val/acc1_sd": "val/acc1_sd", "wall_s": "time/wall_s"}
        return {names[k]: v for k, v in result.items() if k in names and v is not None}

    # ------------------------------------------------------------------ 4 comparison

    def stage_compare(self, teachers: dict, ens: dict, students: dict) -> "comparison.pd.DataFrame":
        p = self.cfg.pipeline
        digest = stage_hash({
            "teachers": teachers["hash"], "ensemble": ens["hash"],
            "students": {k: v.get("checkpoint") for k, v in students.items()},
            "results": {k: seed_values(v, self.cfg.seed) for k, v in students.items()},
            "batch": p.inference_batch, "repeats": p.timing_repeats, "threads": self.threads,
        })
        found = self.stages.lookup("compare", digest, lambda r: files_exist([r["csv"], r["png"], r["md"]]))
        if found is not None:
            self.stages.reuse("compare", digest, found, log_files=lambda run_id: self._log_comparison(found, run_id))
            return comparison.pd.read_csv(found["csv"])
        with self.stages.run("compare", digest) as run_id:
            frame = self._comparison_table(teachers, ens, students)
            folder = self.out / "comparison"
            folder.mkdir(parents=True, exist_ok=True)
            csv, png, md = folder / f"comparison-{digest}.csv", folder / f"comparison-{digest}.png", folder / f"comparison-{digest}.md"
            frame.to_csv(csv, index=False)
            md.write_text(comparison.to_markdown(frame))
            comparison.bar_chart(frame, png, f"{self.cfg.name}: ensemble of {len(ens['teachers'])} -> "
                                 f"{self.cfg.model.student} ({self.data.name})")
            result = {"csv": str(csv), "png": str(png), "md": str(md)}
            self._log_comparison(result, run_id)
            result = self.stages.complete("compare", digest, run_id, result)
        return frame

    def _log_comparison(self, result: dict, run_id: str | None) -> None:
        import shutil

        for key, name in (("csv", "comparison.csv"), ("png", "comparison.png"), ("md", "comparison.md")):
            src = Path(result[key])
            dst = self.out / name
            shutil.copyfile(src, dst)  # the latest comparison under a stable name
            for target in [self.parent_id] + ([run_id] if run_id else []):
                tracking.log_file(self.client, target, dst)

    def _comparison_table(self, teachers: dict, ens: dict, students: dict):
        from orchestrator.models import build_model
        from orchestrator.teacher.checkpoint import load_model_checkpoint, load_teacher

        d, p, arch = self.data, self.cfg.pipeline, student_arch(self.cfg.model)
        images = torch.stack([d.test[i][0] for i in range(min(p.inference_batch, len(d.test)))])
        rows, teacher_models, forwards = [], [], {}
        for r in ens["teachers"]:
            model = load_teacher(r["source"], d.num_classes, d.in_channels, d.image_size).eval()
            teacher_models.append(model)
            forwards[f"teacher {r['name']}"] = model
            size = comparison.size_of(model, d.in_channels, d.image_size)
            t_arch = next((t.arch for t in pipeline_teachers(self.cfg) if t.name == r["name"]), None) or type(model).__name__
            train_s = next((t.get("train_s") for t in teachers["teachers"] if t["name"] == r["name"]), None)
            rows.append({"model": f"teacher {r['name']}", "arch": t_arch, "test_acc1": r["test/acc1"], "n": 1,
                         "train_s": train_s,
                         "val_acc1": r["val/acc1"], "params": size["params"], "mmacs": size["macs"] / 1e6})
        teacher_rows = list(rows)
        forwards["ensemble"] = comparison.ensemble_forward(teacher_models)
        rows.append({"model": "ensemble", "arch": f"{len(teacher_rows)} teachers, mean softmax",
                     "test_acc1": ens["ensemble"]["test/acc1"], "val_acc1": ens["ensemble"]["val/acc1"], "n": 1,
                     "params": sum(r["params"] for r in teacher_rows), "mmacs": sum(r["mmacs"] for r in teacher_rows)})
        # The three students share one architecture: one measurement (same shapes, same time).
        forwards["student"] = build_model(arch, d.num_classes, d.in_channels).eval()
        labels = {
            "student_alone": "student alone",
            "distill_best_teacher": f"student <- best teacher ({ens['best_teacher']})",
            "distill_ensemble": "student <- ensemble",
        }
        for stage, label in labels.items():
            res = students[stage]
            model = load_model_checkpoint(res["checkpoint"], d.num_classes, d.in_channels).eval()
            size = comparison.size_of(model, d.in_channels, d.image_size)
            test = mean_sd(list(seed_values(res, self.cfg.seed).values()))
            rows.append({"model": label, "arch": arch, "test_acc1": test[0], "test_sd": test[1],
                         "n": len(seed_values(res, self.cfg.seed)), "val_acc1": res.get("val/acc1"),
                         "params": size["params"], "mmacs": size["macs"] / 1e6, "train_s": res.get("time_s")})
        ms = comparison.ms_per_image(forwards, images, p.timing_repeats, self.threads)
        for row in rows:
            row["ms_per_image"] = ms[row["model"]] if row["model"] in ms else ms["student"]
        return comparison.build_table(rows)

    # ------------------------------------------------------------------ summary

    def gains(self, students: dict) -> dict[str, PairedGain]:
        """The paired test gains (by seed) with their t-intervals at ``sweep.confirm.level``."""
        seed, level = self.cfg.seed, self.cfg.sweep.confirm.level
        ens, best, alone = (seed_values(students[k], seed) for k in ("distill_ensemble", "distill_best_teacher",
                                                                      "student_alone"))
        return {"ensemble_vs_alone": paired_gain(ens, alone, level),
                "ensemble_vs_best_teacher": paired_gain(ens, best, level),
                "best_teacher_vs_alone": paired_gain(best, alone, level)}

    @staticmethod
    def stage_walls(teachers: dict, ens: dict, students: dict) -> dict[str, float]:
        """stage -> seconds it took (a reused stage: the run that did the work; the students' stages train
        together, so theirs is one shared time)."""
        walls = {"teachers": teachers.get("wall_s"), "ensemble_eval": ens.get("wall_s"),
                 **{stage: res.get("wall_s") for stage, res in students.items()}}
        return {stage: v for stage, v in walls.items() if v is not None}

    def finish(self, frame, teachers: dict, ens: dict, students: dict, start: float) -> None:
        cfg = self.cfg
        gains = self.gains(students)
        elapsed = time.perf_counter() - start
        names = {"distill_ensemble": "student_ensemble", "distill_best_teacher": "student_best_teacher",
                 "student_alone": "student_alone"}
        metrics = {"ensemble/test_acc1": ens["ensemble"]["test/acc1"], "time/pipeline_s": elapsed,
                   **{f"teacher{i}/test_acc1": t["test/acc1"] for i, t in enumerate(ens["teachers"])}}
        per_seed = {}
        for stage, name in names.items():
            values = seed_values(students[stage], cfg.seed)
            mean, sd = mean_sd(list(values.values()))
            metrics.update({f"{name}/test_acc1": mean, f"{name}/test_acc1_sd": sd})
            per_seed[name] = {str(s): v for s, v in sorted(values.items())}
        for name, g in gains.items():
            metrics[f"gain_{name}"] = g.mean
            if g.low is not None:
                metrics.update({f"gain_{name}_low": g.low, f"gain_{name}_high": g.high})
        walls = self.stage_walls(teachers, ens, students)
        metrics.update({f"time/{stage}_wall_s": v for stage, v in walls.items()})
        cost = ens["cost"]
        if "cached_ms_per_batch" in cost:
            metrics.update({"cost/teacher_live_ms_per_batch": cost["live_ms_per_batch"],
                            "cost/teacher_cached_ms_per_batch": cost["cached_ms_per_batch"]})
        tracking.log_metrics(self.client, self.parent_id, metrics, step=0)
        summary = {"stages_reused": self.stages.reused, "stages_run": self.stages.ran, **metrics,
                   "seeds": cfg.pipeline.student_seeds(cfg.seed), "test_acc1_per_seed": per_seed, "wall_s": walls,
                   "gains": {name: g.as_dict() for name, g in gains.items()},
                   "best_teacher": ens["best_teacher"], "cost": cost}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        tracking.log_file(self.client, self.parent_id, self.out / "summary.json")

        n_test = len(self.data.test)
        seeds = ", ".join(map(str, cfg.pipeline.student_seeds(cfg.seed)))
        print(f"\n== Comparison ({n_test} {self.data.name} test images; students: mean ± sd over seeds [{seeds}], "
              f"teachers and ensemble: one trained model each; inference: batch "
              f"{self.cfg.pipeline.inference_batch}, {self.threads} torch thread(s), CPU) ==")
        print(comparison.format_table(frame))
        level = f"{100 * cfg.sweep.confirm.level:.0f}%"
        print(f"\npaired test gains by seed, points [{level} CI]:")
        for label, name in (("student <- ensemble vs student alone", "ensemble_vs_alone"),
                            ("student <- ensemble vs student <- best teacher", "ensemble_vs_best_teacher"),
                            ("student <- best teacher vs student alone", "best_teacher_vs_alone")):
            print(f"  {label:<48} {gains[name].text()}")
        if walls:
            print("wall time: " + ", ".join(f"{stage} {v:.0f} s" for stage, v in walls.items())
                  + " (the students train together; a reused step: the run that did the work)")
        if self.stages.reused:
            print(f"reused stages: {', '.join(self.stages.reused)}")
        print(f"MLflow: experiment '{cfg.tracking.experiment or cfg.name}', parent run {self.parent_id}; "
              f"browse: {tracking.ui_command(self.uri)}")
        print(f"Results: {self.out}  (comparison.csv, comparison.png, comparison.md, summary.json, students/)")
        s = int(elapsed)
        print(f"Pipeline time: {s // 60}m{s % 60:02d}s")
