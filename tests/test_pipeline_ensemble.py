"""The ensemble -> student pipeline: config, stage reuse, and end to end on digits (Ray, Ray Train, MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import ConfigError, apply_overrides, load_pipeline_config, pipeline_teachers
from orchestrator.run.alone import training_key
from pipelines.comparison import accuracy, ensemble_probs
from pipelines.ensemble import main
from pipelines.stages import stage_hash
from pipelines.teachers import teacher_key
from run_checks import assert_every_run_closed

TINY_SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")
TINY = [
    "data.dataset=digits", "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1, tiny_teacher:2]",
    "model.student=tiny_student", "teacher.epochs=2", "teacher.lr=0.1", "train.epochs=2", "train.lr=0.1",
    "data.batch_size=64", "pipeline.timing_repeats=3", "pipeline.seeds=3",
    "sweep.max_concurrent=1",  # --sweep and --compress: one Tune actor per trial run, reused (as test_sweep.TINY)
    "pipeline.max_concurrent=2",  # a stage's Ray tasks two at a time, in two reused processes (each ~8 s of CPU)
]
STUDENTS = ("distill_ensemble", "distill_best_teacher", "student_alone")
STAGES = {"teachers", "ensemble_eval", "distill_ensemble", "distill_best_teacher", "student_alone", "compare"}


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--name", "ens", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--output-dir", str(tmp_path / "out"), *TINY, *extra]


# ---------------------------------------------------------------- fast


def test_config_defaults_overrides_and_teacher_list():
    cfg = load_pipeline_config()
    assert [t.arch for t in pipeline_teachers(cfg)] == ["cnn_teacher", "cnn_teacher", "cnn_teacher_wide"]
    assert [t.seed for t in pipeline_teachers(cfg)] == [0, 1, 2] and cfg.data.dataset == "fashion_mnist"
    assert cfg.sweep.search_space == "ensemble" and cfg.distill.method == "kd"
    cfg = load_pipeline_config(None, ["pipeline.teachers=[tiny_teacher, tiny_teacher:7, runs:/abc/teacher]",
                                      "pipeline.teachers.0.epochs=5", "teacher.lr=0.2", "seed=3"])
    t0, t1, t2 = pipeline_teachers(cfg)
    assert (t0.arch, t0.seed, t0.epochs, t0.lr) == ("tiny_teacher", 3, 5, 0.2)
    assert (t1.seed, t1.epochs) == (7, cfg.teacher.epochs)
    assert t2.checkpoint == "runs:/abc/teacher" and t2.arch is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("pipeline.teachers.0.arch=nope", "pipeline.teachers.0.arch"),
        ("pipeline.teachers.1.epochs=0", "pipeline.teachers.1.epochs"),
        ("pipeline.teachers.9.epochs=2", "pipeline.teachers.9"),
        ("pipeline.sweep=maybe", "pipeline.sweep"),
        ("pipeline.colour=red", "pipeline.colour"),
        ("model.student=nope", "model.student"),
        ("train.epochs=-1", "train.epochs"),
        ("pipeline.teachers=[]", "pipeline.teachers"),
        ("pipeline.seeds=0", "pipeline.seeds"),
        ("pipeline.max_concurrent=0", "pipeline.max_concurrent"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(None, [override])
    assert info.value.key == key


def test_cli_bad_value_exits_2_before_any_work(tmp_path, capsys):
    assert main(tiny_args(tmp_path, "pipeline.teachers.0.lr=-1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pipeline.teachers.0.lr" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_sweep_mode_holds_the_keys_the_user_set(tmp_path, capsys):
    """--sweep: a key the space samples and the user set is held at their value, as in a sweep (dry run says so)."""
    from pipelines.ensemble import build_parser
    from pipelines.teachers import resolve

    cfg = resolve(build_parser().parse_intermixed_args(["--sweep", "distill.kd.temperature=3", "train.epochs=2"]))
    assert cfg.sweep.held_keys == ["distill.kd.temperature"]  # train.epochs is not in the space: nothing to hold
    assert resolve(build_parser().parse_intermixed_args(["distill.kd.temperature=3"])).sweep.held_keys == []
    assert main(tiny_args(tmp_path, "--sweep", "--dry-run", f"sweep.search_space={TINY_SPACE}",
                          "distill.kd.temperature=3")) == 0
    out = capsys.readouterr().out
    held = next(line for line in out.splitlines() if line.startswith("held at the given values"))
    assert "distill.kd.temperature=3.0" in held and "train.lr=0.1" in held  # TINY sets train.lr too
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_teacher_cache_key_is_shared_with_the_sweeps_default_teacher():
    cfg = load_pipeline_config(None, ["data.dataset=digits", "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]"])
    t0, t1 = pipeline_teachers(cfg)
    sweep_key = training_key(apply_overrides(cfg, {"data.train_subset": None}), "tiny_teacher", t0.epochs, t0.lr)
    assert teacher_key(cfg, t0) == sweep_key  # same seed as the split: the sweep's cache file
    assert teacher_key(cfg, t1) != sweep_key and teacher_key(cfg, t1).endswith("-d0")


def test_stage_hash_is_stable_and_order_free():
    assert stage_hash({"a": 1, "b": [1, 2]}) == stage_hash({"b": [1, 2], "a": 1})
    assert stage_hash({"a": 1}) != stage_hash({"a": 2})


@pytest.mark.parametrize("cpus, tasks", [(2, 3), (2, 2), (4, 3), (3, 7), (16, 3)])
def test_cpu_share_lets_every_task_start_at_once(monkeypatch, cpus, tasks):
    import ray

    from pipelines.stages import cpu_share

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": float(cpus)})
    share = cpu_share(tasks)
    assert 0 < share <= 1.0 and share * tasks <= cpus  # never rounds up past the cluster (3 x 0.67 > 2)
    assert share == 1.0 or share * tasks > cpus - 0.05 * tasks
    capped = cpu_share(tasks, at_once=2)  # pipeline.max_concurrent=2: two tasks at a time fit together
    assert capped * min(tasks, 2) <= cpus and (capped == 1.0 or capped * min(tasks, 2) > cpus - 0.1)


def test_queued_tasks_run_at_most_at_once_and_the_caller_can_cancel_them(ray_session, tmp_path):
    """pipeline.max_concurrent: wait_with_progress starts the queued tasks as slots free, in order; every started
    task lands in ``pending`` (what the stages cancel on an error)."""
    import functools

    import ray

    from pipelines.stages import wait_with_progress

    def span(i: int, folder: str) -> int:  # defined here: Ray ships it by value (workers cannot import this file)
        import time

        start = time.time()
        time.sleep(0.5)
        Path(folder, f"{i}.json").write_text(json.dumps([start, time.time()]))
        return i

    task = ray.remote(num_cpus=0.5)(span)
    pending: dict = {}
    queued = [(f"t{i}", functools.partial(task.remote, i, str(tmp_path))) for i in range(5)]
    results = wait_with_progress(pending, None, {}, {}, queued=queued, at_once=2, poll_s=0.2)
    assert results == {f"t{i}": i for i in range(5)} and list(pending.values()) == [f"t{i}" for i in range(5)]
    spans = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(5)]
    for start, _ in spans:  # tasks running at each task's start, itself included
        assert sum(a <= start < b for a, b in spans) <= 2, spans
    assert max(s for s, _ in spans[2:]) > min(b for _, b in spans[:2])  # the last three waited for a slot


def test_ensemble_prediction_is_the_mean_of_softmax():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 2.0]])
    probs = ensemble_probs([a, b])
    expected = (torch.softmax(a, 1) + torch.softmax(b, 1)) / 2
    assert torch.allclose(probs, expected) and accuracy(probs, torch.tensor([1, 1])) == 1.0


# ---------------------------------------------------------------- end to end


def _runs(uri: str, experiment: str = "ens") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def _by_kind(runs: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags.get("orchestrator.kind"), []).append(r)
    return out


def _interval(a: dict, b: dict) -> tuple[float, float, float]:
    """The paired 95% t-interval of a - b by hand (scipy's t quantile), seed -> value dicts."""
    import math
    import statistics

    from scipy import stats

    d = [a[s] - b[s] for s in sorted(a)]
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return statistics.mean(d), statistics.mean(d) - half, statistics.mean(d) + half


@pytest.mark.slow
def test_pipeline_end_to_end_on_seeds_then_reruns_reuse_every_stage_and_seed(ray_session, isolated_cache, tmp_path, sqlite_store,
                                                                              monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert main(tiny_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "Comparison" in out and "student <- ensemble" in out and "reusing stage" not in out
    assert "training 9 student run(s) at most 2 at once (3 seed(s) each)" in out  # pipeline.max_concurrent=2
    assert "mean ± sd over seeds [0, 1, 2]" in out and "(one model)" in out and "(3 seeds)" in out

    kinds = _by_kind(_runs(uri))
    (parent,) = kinds["pipeline"]
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags["stage"]: r for r in kinds["stage"]}
    assert set(stages) == STAGES
    for run in stages.values():
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "orchestrator.stage_hash" in run.data.tags
    # Teachers: three Ray Train runs, each an MLflow teacher run nested under the teachers stage, model logged.
    teachers = kinds["teacher"]
    assert len(teachers) == 3
    for run in teachers:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == stages["teachers"].info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc1")] == [1, 2]
        assert "checkpoint" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert [a.path for a in client.list_artifacts(run.info.run_id, "teacher")] == ["teacher/checkpoint.pt"]
    # Students: one child run per (student, seed) under its stage, logging per epoch.
    children = {r.data.tags["stage"]: r for r in kinds["student"]}
    assert set(children) == {f"{stage}-seed{s}" for stage in STUDENTS for s in (0, 1, 2)}
    for label, run in children.items():
        stage = label.rsplit("-seed", 1)[0]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == stages[stage].info.run_id
        assert run.data.tags["seed"] == label.rsplit("-seed", 1)[1]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc1")] == [1, 2]
        if stage != "student_alone":  # un-augmented: the outputs computed once, read by every seed
            assert run.data.tags["teacher_inputs"].endswith(": precomputed outputs")
    # The registered student (first seed) as ONNX (a logged model), the others as tensor-only checkpoints.
    assert {m.name for m in client.search_logged_models([parent.info.experiment_id])} == {"student"}
    for label in ("distill_best_teacher-seed0", "student_alone-seed2", "distill_ensemble-seed1"):
        assert [a.path for a in client.list_artifacts(children[label].info.run_id, "student")] == ["student/checkpoint.pt"]
    cost = stages["ensemble_eval"].data.metrics
    assert cost["cost/teacher_cached_ms_per_batch"] < cost["cost/teacher_live_ms_per_batch"]
    # The comparison: printed, CSV + PNG on the parent run; students as mean ± sd, teachers one model each.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.png", "config.yaml", "summary.json"} <= artifacts
    local = Path(client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path / "dl")))
    table = pd.read_csv(local)
    assert list(table["model"])[3:] == ["ensemble", "student alone", table["model"][5], "student <- ensemble"]
    assert table["model"][5].startswith("student <- best teacher")
    assert (table["params"] > 0).all() and (table["ms_per_image"] > 0).all() and table["test_acc1"].between(0, 1).all()
    assert table["params"][3] == table["params"][:3].sum()
    assert list(table["n"]) == [1, 1, 1, 1, 3, 3, 3] and table["test_sd"][:4].isna().all()
    assert (table["train_s"].drop(3) > 0).all()  # each teacher and student run's own time; the ensemble: none
    # Per-seed values in summary.json; means, sds and intervals equal a hand computation from them.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    per_seed = {k: {int(s): v for s, v in d.items()} for k, d in summary["test_acc1_per_seed"].items()}
    assert summary["seeds"] == [0, 1, 2] and all(sorted(d) == [0, 1, 2] for d in per_seed.values())
    ens, best, alone = per_seed["student_ensemble"], per_seed["student_best_teacher"], per_seed["student_alone"]
    assert table["test_acc1"][6] == pytest.approx(sum(ens.values()) / 3)
    for name, (a, b) in {"ensemble_vs_alone": (ens, alone), "ensemble_vs_best_teacher": (ens, best),
                         "best_teacher_vs_alone": (best, alone)}.items():
        gain = summary["gains"][name]
        assert (gain["mean"], gain["low"], gain["high"]) == pytest.approx(_interval(a, b), abs=1e-9)
        assert gain["n"] == 3 and gain["significant"] == (gain["low"] > 0 or gain["high"] < 0)
        assert parent.data.metrics[f"gain_{name}_low"] == pytest.approx(gain["low"])
        assert parent.data.metrics[f"gain_{name}_high"] == pytest.approx(gain["high"])
    assert parent.data.metrics["student_alone/test_acc1_sd"] == pytest.approx(table["test_sd"][4])
    assert set(summary["wall_s"]) == {"teachers", "ensemble_eval", *STUDENTS} and "wall time: teachers" in out
    first_csv = (tmp_path / "out" / "comparison.csv").read_text()

    # Rerun: every stage reused (no teacher or student trained again), same outputs, a new parent.
    assert main(tiny_args(tmp_path)) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"reusing stage {stage}" in out
    kinds = _by_kind(_runs(uri))
    assert len(kinds["teacher"]) == 3 and len(kinds["pipeline"]) == 2 and len(kinds["student"]) == 9
    second = [p for p in kinds["pipeline"] if p.info.run_id != parent.info.run_id][0]
    assert second.info.status == "FINISHED"
    reused = [r for r in kinds["stage"] if r.data.tags["mlflow.parentRunId"] == second.info.run_id]
    assert {r.data.tags["stage"] for r in reused} == STAGES
    assert all(r.data.tags["orchestrator.reused_from"] == stages[r.data.tags["stage"]].info.run_id for r in reused)
    assert {"comparison.csv", "comparison.png"} <= {a.path for a in client.list_artifacts(second.info.run_id)}
    assert (tmp_path / "out" / "comparison.csv").read_text() == first_csv
    again = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert again["stages_reused"] and not again["stages_run"]
    assert again["test_acc1_per_seed"] == summary["test_acc1_per_seed"] and again["gains"] == summary["gains"]

    # One more seed: only that seed's three students train; the others are reused as child runs.
    assert main(tiny_args(tmp_path, "pipeline.seeds=4")) == 0
    capsys.readouterr()
    more = json.loads((tmp_path / "out" / "summary.json").read_text())
    trained = {s for s in more["stages_run"] if "-seed" in s}
    assert trained == {f"{stage}-seed3" for stage in STUDENTS}
    assert {"teachers", "ensemble_eval"} <= set(more["stages_reused"])
    assert {f"{stage}-seed{s}" for stage in STUDENTS for s in (0, 1, 2)} <= set(more["stages_reused"])
    assert all(more["test_acc1_per_seed"][k][s] == v for k, d in summary["test_acc1_per_seed"].items()
               for s, v in d.items())
    assert more["gains"]["ensemble_vs_alone"]["n"] == 4
    kinds = _by_kind(_runs(uri))
    assert len(kinds["teacher"]) == 3
    fresh = [r for r in kinds["student"] if "orchestrator.reused_from" not in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in fresh) == sorted(
        [f"{stage}-seed{s}" for stage in STUDENTS for s in (0, 1, 2)] + [f"{stage}-seed3" for stage in STUDENTS])
    assert_every_run_closed(uri)  # the registering student stage included: closed after its model


@pytest.mark.slow
def test_pipeline_sweep_mode_uses_the_sweep_machinery_with_several_teachers(ray_session, isolated_cache, tmp_path, sqlite_store,
                                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tiny_args(tmp_path, "--sweep", f"sweep.search_space={TINY_SPACE}", "sweep.num_samples=2",
                     "sweep.confirm.top_k=1", "sweep.confirm.seeds=2",  # confirmed, with 6 jobs at most (not 12)
                     "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]", "pipeline.seeds=1")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "student <- ensemble" in out
    kinds = _by_kind(_runs(uri))
    stage = next(r for r in kinds["stage"] if r.data.tags["stage"] == "distill_ensemble")
    (sweep,) = kinds["sweep"]
    assert sweep.data.tags["mlflow.parentRunId"] == stage.info.run_id and sweep.info.status == "FINISHED"
    trials = kinds["trial"]
    assert len(trials) == 2 and all(t.data.tags["mlflow.parentRunId"] == sweep.info.run_id for t in trials)
    result = json.loads(next((tmp_path / "out" / "stages").glob("distill_ensemble-*.json")).read_text())
    assert result["best_params"] and Path(result["checkpoint"]).is_file()


# ---------------------------------------------------------------- --compress

FRONT_SPACE = str(Path(__file__).parent / "data" / "tiny_front_space.yaml")
COMPRESS = ["--compress", f"sweep.search_space={FRONT_SPACE}", "sweep.objectives=[val/acc1:max,cost/macs:min]"]


def compress_args(tmp_path: Path, *extra: str) -> list[str]:
    """The tiny pipeline's arguments without pipeline.seeds (--compress confirms on sweep.confirm.seeds)."""
    return [a for a in tiny_args(tmp_path, *extra) if a != "pipeline.seeds=3"]


def test_compress_mode_takes_the_compress_space_and_refuses_what_gives_no_front(tmp_path, capsys):
    """--compress: the compress space with its objectives and run sizes, each front point with its student
    alone; --sweep with it, pipeline.seeds, a space without a cost objective or no confirmation: exit 2."""
    from orchestrator.sweep.search.space import load_space
    from pipelines.ensemble import build_parser
    from pipelines.teachers import resolve

    cfg = resolve(build_parser().parse_intermixed_args(["--compress"]))
    assert (cfg.name, cfg.sweep.search_space, cfg.sweep.baseline) == ("fmnist-ensemble-compress", "compress", True)
    assert (cfg.sweep.num_samples, cfg.sweep.confirm.top_k, cfg.sweep.confirm.seeds) == (12, 3, 3)
    assert cfg.sweep.objectives == ["val/acc1:max", "cost/latency_ms:min"]
    # DKD distils from one teacher only: with the ensemble's 3 it is not sampled, nor are its knobs
    space = load_space("compress", cfg)
    assert "dkd" not in next(p for p in space.params if p.key == "distill.method").choices
    assert not any(p.key.startswith("distill.dkd.") for p in space.params)
    assert "distill.method=dkd" in space.dropped and "not sampled: distill.method=dkd" in space.table()
    for extra, key in ((["--sweep"], "pipeline.compress"), (["pipeline.seeds=2"], "pipeline.seeds"),
                       (["sweep.objectives=null"], "sweep.objectives"), (["sweep.confirm.top_k=0"], "sweep.confirm.top_k")):
        assert main(compress_args(tmp_path, *COMPRESS, *extra)) == 2
        assert f"config key '{key}'" in capsys.readouterr().err
    budget = ["--compress", f"sweep.search_space={FRONT_SPACE}", "sweep.budget=macs <= 1"]
    assert main(compress_args(tmp_path, *budget)) == 2  # no student fits: known up front
    assert "no student fits cost/macs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_compress_dry_run_shows_the_search_the_students_and_the_reference_rows(tmp_path, capsys):
    assert main(compress_args(tmp_path, *COMPRESS, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "compression search with the ensemble of 3 teachers as teacher:" in out
    assert "search objectives: val/acc1 (max), cost/macs (min)" in out and "tiny_student[width=0.125]" in out
    assert "confirmation: the Pareto front of the completed trials" in out and "reference rows of the front" in out
    assert "stages: teachers, ensemble_eval, compress" in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_compress_mode_ends_with_a_front_referenced_to_the_ensemble_and_its_teachers(
        ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    """Digits, two teachers: the sweep with the ensemble as teacher (through Ray Tune + Ray Train), its front
    of the two students confirmed with each one alone, the ensemble and each teacher as reference rows."""
    monkeypatch.chdir(tmp_path)
    args = compress_args(tmp_path, *COMPRESS, "sweep.num_samples=3", "sweep.confirm.top_k=2", "sweep.confirm.seeds=2",
                         "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]")
    assert main(args) == 0
    out = capsys.readouterr().out
    print(out)  # shown if an assertion fails
    assert "ensemble of 2 (mean softmax)" in out and "teacher t1-tiny_teacher-s1" in out and "(reference)" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    front = summary["front"]
    assert [r["label"] for r in front["references"]] == [
        "ensemble of 2 (mean softmax)", "teacher t0-tiny_teacher-s0", "teacher t1-tiny_teacher-s1"]
    ens, t0, t1 = front["references"]
    assert ens["cost/macs"] == t0["cost/macs"] + t1["cost/macs"] and ens["cost/latency_ms"] > 0
    assert ens["test_acc1"] == summary["ensemble/test_acc1"]
    points = front["points"]
    assert [p["arch"] for p in points] == ["tiny_student[width=0.125]", "tiny_student[width=2.0]"]
    for p in points:
        assert p["seeds"] == [1, 2] and sorted(p["alone_test"]) == ["1", "2"] and Path(p["onnx"]).is_file()
        assert p["gain_vs_alone"]["n"] == 2
    assert Path(front["plot"]).is_file()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kinds = _by_kind(_runs(uri))
    stage = next(r for r in kinds["stage"] if r.data.tags["stage"] == "compress")
    (sweep,) = kinds["sweep"]
    assert sweep.data.tags["mlflow.parentRunId"] == stage.info.run_id
    assert sweep.data.tags["front.reference.0"] == "ensemble of 2 (mean softmax)" and len(kinds["front"]) == 2
    assert_every_run_closed(uri)
