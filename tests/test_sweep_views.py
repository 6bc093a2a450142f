"""The sweep with data.augment=true: one shared teacher view cache, read by every trial (teacher_outputs/: choice.py,
prepare.py, read.py; run/worker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import load_config
from orchestrator.data import build_data
from orchestrator.teacher_outputs import CachedTeacherOutputs
from orchestrator.sweep.search.space import load_space, possible_configs
from orchestrator.sweep.cli import main
from orchestrator.teacher_outputs import choose, plan_line
from orchestrator.teacher_outputs import outputs_for_seed, teacher_inputs_tag

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
TINY_SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")
TINY = [
    "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
    "teacher.epochs=4", "teacher.lr=0.1", "train.epochs=2", f"sweep.search_space={TINY_SPACE}",
    "sweep.confirm.top_k=1", "sweep.confirm.seeds=2",
    "sweep.max_concurrent=1",  # one Tune actor per trial run, reused (as test_sweep.TINY)
]


def choice(*overrides):
    cfg = load_config(None, [*TINY, *overrides])
    data = build_data(cfg.data, cfg.seed)
    return choose(cfg, possible_configs(load_space(cfg.sweep.search_space, cfg, len(data.train)), cfg)), cfg, data


def test_augmented_sweep_chooses_the_view_cache_for_the_search_and_confirmation_seeds():
    views, cfg, data = choice("data.augment=true")
    assert views.kind == "views" and views.seeds == (0, 1, 2) and set(views.needs.fields) == {"logits", "embedding"}
    assert choice("data.augment=true", "sweep.confirm.top_k=0")[0].seeds == (0,)
    assert choice("data.augment=true", "sweep.seeds=[3,4]")[0].seeds == (3, 4, 5, 6)
    assert choice()[0].kind == "cached"  # un-augmented: one pass on the plain split, as before
    live = choice("data.augment=true", f"sweep.search_space={SPACES / 'fitnet.yaml'}")[0]
    assert live.kind == "live" and "fitnet" in live.reason and "feature maps" in live.reason
    assert choice("data.augment=true", "teacher.cache_outputs=false")[0].kind == "live"
    line = plan_line(cfg, possible_configs(load_space(cfg.sweep.search_space, cfg, len(data.train)), cfg), data)
    assert line.startswith("teacher outputs: shared view cache: logits + embedding in fp16") and "seeds [0, 1, 2]" in line
    per_epoch = len(data.train) * (10 + 32) * 2 / 2**20  # tiny_teacher: 10 classes, 32-d embedding
    assert f"{per_epoch:.2f} MiB per epoch per seed" in line
    topk = choice("data.augment=true", "teacher.view_topk=3")[1]
    assert "top-3 logits + embedding" in plan_line(topk, possible_configs(
        load_space(topk.sweep.search_space, topk, len(data.train)), topk), data)


def test_dry_run_prints_the_view_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *TINY, "data.augment=true"]) == 0
    assert "teacher outputs: shared view cache" in capsys.readouterr().out


class _Views:  # what outputs_for_seed reads of a TeacherViews
    def __init__(self, seed):
        self.meta = type("Meta", (), {"seed": seed})()


def test_each_seed_gets_its_own_views_or_a_live_teacher():
    caches = [_Views(0), _Views(1), _Views(0), _Views(1)]  # two teachers x seeds 0, 1
    kd = load_config(None, ["distill.method=kd"]).distill
    assert outputs_for_seed(caches, 1, 2, kd) == [caches[1], caches[3]]
    assert outputs_for_seed(caches, 7, 2, kd) == []  # no views of seed 7: never another seed's, the teacher runs live
    assert teacher_inputs_tag({0: caches[:1], 7: []}) == "seed 0: view cache, seed 7: live teacher"
    plain = CachedTeacherOutputs(torch.zeros(4, 10), None)
    assert outputs_for_seed([plain], 7, 1, kd) == [plain]
    assert outputs_for_seed([plain], 7, 1, load_config(None, ["distill.method=crd"]).distill) == []  # no embedding


def trial_tags(uri: str, experiment: str) -> dict[str, str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r.data.tags.get("teacher_inputs", "") for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("orchestrator.kind") in ("trial", "confirm")}


@pytest.mark.slow
def test_augmented_sweep_shares_one_view_cache(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--name", "aug", "--num-samples", "2", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
            *TINY, "data.augment=true"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "teacher outputs: shared view cache (logits + embedding in fp16), seeds [0, 1, 2] x 2 epochs" in out
    assert "built 6 epoch(s) of views" in out
    tags = [v for v in trial_tags(uri, "aug").values() if v]  # (the student alone reads no teacher: no tag)
    assert set(tags) == {"seed 0: view cache", "seed 1: view cache", "seed 2: view cache"}, tags
    assert tags.count("seed 0: view cache") == 2  # the search's trials; seeds 1, 2: the confirmation's jobs
    # a second sweep finds the views
    again = [*args[:1], "aug2", *args[2:], "--num-samples", "1", "sweep.confirm.top_k=0", "sweep.baseline=false"]
    assert main(again) == 0  # (the views are what is tested: no student-alone run)
    assert "found in the cache" in capsys.readouterr().out


@pytest.mark.slow
def test_views_built_by_a_ray_task(ray_session, isolated_cache, digits):
    from orchestrator.teacher_outputs import shared_views
    from orchestrator.teacher_outputs import TeacherViews
    from orchestrator.teacher.checkpoint import save_model_checkpoint

    views, cfg, data = choice("data.augment=true", "train.in_process=false")
    _, _, teacher = digits
    path = isolated_cache / "teacher.pt"
    save_model_checkpoint(path, teacher, "tiny_teacher", data, {})
    folders = shared_views([str(path)], cfg, data, views, None)
    assert [TeacherViews(f).meta.seed for f in folders] == [0, 1, 2]
    assert all(TeacherViews(f).epochs() == 2 for f in folders)
