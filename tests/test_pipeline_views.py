"""The ensemble pipeline with data.augment=true: one shared view cache per teacher, read by its distillation
stages instead of the teachers (pipelines/ensemble_pipeline.py, ensemble_tasks.py; the sweep's
teacher_outputs/prepare.py, choice.py and read.py do the work)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.infra import tracking
from orchestrator.config.schema import apply_overrides, load_pipeline_config, to_dict
from orchestrator.data import build_data
from orchestrator.teacher_outputs import TeacherViews
from orchestrator.teacher.checkpoint import save_model_checkpoint
from pipelines.ensemble_pipeline import EnsemblePipeline
from pipelines.ensemble_tasks import distill

TINY_SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")
TINY = [
    "data.dataset=digits", "pipeline.teachers=[tiny_teacher:0, tiny_teacher:1]", "model.student=tiny_student",
    "teacher.epochs=2", "teacher.lr=0.1", "train.epochs=2", "train.lr=0.1", "data.batch_size=64",
    "pipeline.timing_repeats=3", "pipeline.seeds=1",
    "pipeline.max_concurrent=2",  # a stage's Ray tasks two at a time, in reused processes (as test_pipeline_ensemble)
]


def pipeline(tmp_path: Path, *overrides: str) -> EnsemblePipeline:
    """The pipeline's object, no run started (the stages' MLflow client is not needed by what is tested)."""
    cfg = load_pipeline_config(None, [*TINY, f"pipeline.output_dir={tmp_path / 'out'}", *overrides])
    return EnsemblePipeline(cfg, build_data(cfg.data, cfg.seed), f"sqlite:///{tmp_path / 'mlflow.db'}", None)


def test_each_stage_reads_what_choose_says(tmp_path):
    plain = pipeline(tmp_path)
    assert plain._inputs_for(plain.cfg).kind == "cached"  # un-augmented: as before
    aug = pipeline(tmp_path, "data.augment=true")
    inputs = aug._inputs_for(aug.cfg)
    assert inputs.kind == "views" and inputs.seeds == (0,) and set(inputs.needs.fields) == {"logits"}
    assert aug._inputs_for(apply_overrides(aug.cfg, {"seed": 3})).seeds == (3,)
    fitnet = pipeline(tmp_path, "data.augment=true", "distill.method=ce+fitnet")
    live = fitnet._inputs_for(fitnet.cfg)
    assert live.kind == "live" and "fitnet" in live.reason  # feature maps: the teachers run live
    # --sweep: the views hold what every config of the space reads, so the best-teacher run shares the sweep's
    swept = pipeline(tmp_path, "data.augment=true", "pipeline.sweep=true", f"sweep.search_space={TINY_SPACE}")
    assert set(swept._inputs_for(swept.cfg).needs.fields) == {"logits", "embedding"}


@pytest.fixture
def two_teachers(digits, isolated_cache) -> list[str]:
    """Two tiny_teacher checkpoints with different weights (two view caches)."""
    _, data, teacher = digits
    other = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    paths = [isolated_cache / "t0.pt", isolated_cache / "t1.pt"]
    for path, model in zip(paths, (teacher, other)):
        save_model_checkpoint(path, model, "tiny_teacher", data, {})
    return [str(p) for p in paths]


def _run(client: MlflowClient, experiment_id: str, name: str) -> str:
    run_id = tracking.start_run(client, experiment_id, name, "stage")
    client.set_terminated(run_id)
    return run_id


def test_augmented_stages_share_one_view_cache_per_teacher_and_match_the_live_teachers(
    tmp_path, two_teachers, isolated_cache, monkeypatch, capsys
):
    pipe = pipeline(tmp_path, "data.augment=true")
    cfg, (t0, t1) = pipe.cfg, two_teachers
    alone = apply_overrides(cfg, {"distill.method": "ce"})
    runs = {"distill_ensemble": (cfg, [t0, t1]), "distill_best_teacher": (cfg, [t1]), "student_alone": (alone, [])}
    views = pipe._build_views(runs)
    folders = sorted((isolated_cache / "teacher-views").iterdir())
    assert len(folders) == 2  # one per teacher, the best teacher's shared by both stages
    assert views == {"distill_ensemble": [str(f) for f in views["distill_ensemble"]],
                     "distill_best_teacher": [views["distill_ensemble"][1]]}
    assert sorted(Path(f) for f in views["distill_ensemble"]) == folders
    assert all(TeacherViews(f).meta.seed == 0 and TeacherViews(f).epochs() == 2 for f in folders)
    assert "built 4 epoch(s) of views" in capsys.readouterr().out  # 2 teachers x 2 epochs, once
    assert pipe._build_views(runs) == views and "found in the cache" in capsys.readouterr().out

    threads = torch.get_num_threads()
    client = MlflowClient(pipe.uri)
    experiment_id = tracking.ensure_experiment(client, "views", pipe.uri)

    def no_teacher(*_a, **_k):
        raise AssertionError("a teacher was loaded in a run fed the view caches")

    with monkeypatch.context() as patch:  # the run never loads (so never runs) a teacher
        patch.setattr("orchestrator.teacher.checkpoint.load_teacher", no_teacher)
        cached_id = _run(client, experiment_id, "views")
        cached = distill(to_dict(cfg), [t0, t1], views["distill_ensemble"], str(tmp_path / "v.pt"), pipe.uri, cached_id)
    live_id = _run(client, experiment_id, "live")
    live = distill(to_dict(cfg), [t0, t1], [], str(tmp_path / "l.pt"), pipe.uri, live_id)
    torch.set_num_threads(threads)
    assert cached["teacher_inputs"] == "seed 0: view cache" and not cached["teachers_live"]
    assert live["teacher_inputs"] == "seed 0: live teacher" and live["teachers_live"]
    assert client.get_run(cached_id).data.tags["teacher_inputs"] == "seed 0: view cache"
    keys = [k for k in client.get_run(live_id).data.metrics if k.startswith("train/loss")]
    assert keys
    for key in keys:  # the same losses, epoch by epoch, to fp16 rounding of the teachers' stored logits
        a = [m.value for m in sorted(client.get_metric_history(live_id, key), key=lambda m: m.step)]
        b = [m.value for m in sorted(client.get_metric_history(cached_id, key), key=lambda m: m.step)]
        assert len(a) == len(b) == 2 and b == pytest.approx(a, rel=2e-3, abs=1e-4), key


def _stage_tags(uri: str) -> dict[str, list[str]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ens")
    out: dict[str, list[str]] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        if r.data.tags.get("orchestrator.kind") == "stage":
            out.setdefault(r.data.tags["stage"], []).append(r.data.tags.get("teacher_inputs", ""))
    return out


@pytest.mark.slow
def test_augmented_pipeline_end_to_end_then_rerun(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    from pipelines.ensemble import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--name", "ens", "--tracking-uri", uri, "--output-dir", str(tmp_path / "out"), *TINY, "data.augment=true"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teacher outputs: shared view cache (logits in fp16), seeds [0] x 2 epochs" in out
    assert "distill_ensemble-seed0: teacher inputs: seed 0: view cache" in out
    assert "distill_best_teacher-seed0: teacher inputs: seed 0: view cache" in out
    assert len(list((isolated_cache / "teacher-views").iterdir())) == 2  # one per teacher
    tags = _stage_tags(uri)
    assert tags["distill_ensemble"] == tags["distill_best_teacher"] == ["seed 0: view cache"]
    assert tags["student_alone"] == [""]
    # a rerun reuses every stage (no views built again), and its reused stage runs carry the tag
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stage " not in out.replace("reusing stage", "") and "shared view cache" not in out
    assert _stage_tags(uri)["distill_ensemble"] == ["seed 0: view cache"] * 2


def test_dry_run_says_what_the_distillation_stages_read_from_their_teachers(capsys):
    from pipelines.ensemble import main

    assert main(["--dry-run", *TINY, "data.augment=true"]) == 0
    out = capsys.readouterr().out
    assert "teacher outputs: shared view cache: logits in fp16" in out
    assert "seeds [0] x 2 epochs" in out and "read by every distillation stage" in out
    assert "nothing was started" in out
    assert main(["--dry-run", *TINY]) == 0
    assert ("teacher outputs: logits computed once on the un-augmented train split, shared by every distillation "
            "stage") in capsys.readouterr().out
