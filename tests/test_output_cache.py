"""Teacher-output cache keyed by the teacher's weights, not its file name or URI."""

from __future__ import annotations

import shutil

import pytest
import torch

from orchestrator.config.schema import load_config
from orchestrator.data import build_data
from orchestrator.teacher_outputs import CachedTeacherOutputs, compute_teacher_outputs
from orchestrator.models import build_model
from orchestrator.teacher_outputs import teacher_outputs_file
from orchestrator.teacher.checkpoint import save_model_checkpoint

DIGITS = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student"]


@pytest.fixture(scope="module")
def small():
    cfg = load_config(None, DIGITS)
    return cfg, build_data(cfg.data, cfg.seed)


def _teacher(seed: int):
    torch.manual_seed(seed)
    return build_model("tiny_teacher", 10, 1).eval()


def _expected(model, data) -> torch.Tensor:
    return compute_teacher_outputs(model, data.train_eval, 512).logits


def test_two_teachers_with_the_same_file_name_get_their_own_outputs(small, isolated_cache, tmp_path):
    cfg, data = small
    first, second = _teacher(1), _teacher(2)
    for folder, model in (("a", first), ("b", second)):
        save_model_checkpoint(tmp_path / folder / "teacher.pt", model, "tiny_teacher", data, {})
    path_a = teacher_outputs_file(str(tmp_path / "a" / "teacher.pt"), cfg, data)
    path_b = teacher_outputs_file(str(tmp_path / "b" / "teacher.pt"), cfg, data)
    assert path_a != path_b
    assert torch.allclose(CachedTeacherOutputs.load(path_a).logits, _expected(first, data))
    assert torch.allclose(CachedTeacherOutputs.load(path_b).logits, _expected(second, data))

    # The same weights under another name share the file; another split gets its own.
    shutil.copy(tmp_path / "a" / "teacher.pt", tmp_path / "copy.pt")
    assert teacher_outputs_file(str(tmp_path / "copy.pt"), cfg, data) == path_a
    other_seed = load_config(None, [*DIGITS, "seed=1"])
    assert teacher_outputs_file(str(tmp_path / "a" / "teacher.pt"), other_seed, data) != path_a


def _log_teachers(tmp_path, data, models) -> list[str]:
    """``runs:/<id>/teacher`` URIs of ``models``, each logged as this tool's checkpoint in its own run."""
    import mlflow

    from orchestrator.infra import tracking
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = tracking.check_connection(uri)
    experiment = tracking.ensure_experiment(client, "teachers", uri)
    sources = []
    for i, model in enumerate(models):
        run_id = tracking.start_run(client, experiment, "t", "teacher")
        save_model_checkpoint(tmp_path / f"logged{i}" / "teacher.pt", model, "tiny_teacher", data, {})
        sources.append(tracking.log_checkpoint(client, run_id, tmp_path / f"logged{i}" / "teacher.pt", "teacher"))
        tracking.end_run(client, run_id, "FINISHED")
    return sources


def test_two_runs_uris_get_their_own_outputs(small, isolated_cache, tmp_path):
    """Every ``runs:/<id>/teacher`` URI has the same stem ("teacher"); the cache must not care."""
    cfg, data = small
    models = [_teacher(3), _teacher(4)]
    sources = _log_teachers(tmp_path, data, models)
    assert [s.rsplit("/", 1)[1] for s in sources] == ["teacher", "teacher"]
    paths = [teacher_outputs_file(s, cfg, data) for s in sources]
    assert paths[0] != paths[1]
    for path, model in zip(paths, models):
        assert torch.allclose(CachedTeacherOutputs.load(path).logits, _expected(model, data))


def test_pipeline_uses_each_teachers_own_outputs_and_shares_the_sweeps_files(small, isolated_cache, tmp_path):
    """The ensemble pipeline's teacher task: same file names and same-stem URIs get their own outputs, in
    the sweep's content-keyed file (the fields the objective reads)."""
    from orchestrator.config.schema import to_dict
    from orchestrator.distill import registry
    from pipelines.ensemble_tasks import evaluate_teacher

    cfg, data = small
    models = [_teacher(7), _teacher(8), _teacher(9), _teacher(10)]
    for folder, model in zip("ab", models):
        save_model_checkpoint(tmp_path / folder / "teacher.pt", model, "tiny_teacher", data, {})
    sources = [str(tmp_path / "a" / "teacher.pt"), str(tmp_path / "b" / "teacher.pt"),
               *_log_teachers(tmp_path, data, models[2:])]
    needs = registry.teacher_needs(cfg.distill) | registry.OUTPUTS
    results = [evaluate_teacher(s, to_dict(cfg), True, 1) for s in sources]
    paths = [r["outputs"] for r in results]
    assert len(set(paths)) == 4 and all(r["computed"] for r in results)
    for source, path, model in zip(sources, paths, models):
        cached = CachedTeacherOutputs.load(path)
        assert torch.allclose(cached.logits, _expected(model, data)) and cached.embedding is not None
        assert str(teacher_outputs_file(source, cfg, data, needs)) == path  # the sweep's file: shared
    again = evaluate_teacher(sources[0], to_dict(cfg), True, 1)
    assert again["outputs"] == paths[0] and not again["computed"]


@pytest.mark.slow
def test_second_sweep_with_another_teacher_of_the_same_name_uses_its_own_outputs(
    ray_session, small, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys
):
    from orchestrator.sweep.cli import main

    _, data = small
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {type: float, low: 0.05, high: 0.2}\nfixed:\n  distill.method: kd\n")
    written = []
    for folder, seed in (("a", 5), ("b", 6)):
        save_model_checkpoint(tmp_path / folder / "teacher.pt", _teacher(seed), "tiny_teacher", data, {})
        args = [
            "--name", f"cache-{folder}", "--num-samples", "1", "--storage-path", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *DIGITS, "train.epochs=1",
            "sweep.baseline=false", "sweep.confirm.top_k=0", f"sweep.search_space={space}", f"teacher.checkpoint={tmp_path / folder / 'teacher.pt'}",
        ]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "computed once" in out  # the second sweep did not reuse the first teacher's outputs
        written.append(out.split("computed once", 1)[1].split("-> ", 1)[1].split()[0])
    assert written[0] != written[1]
    assert sorted(p.name for p in (isolated_cache / "teacher-outputs").glob("*.pt")) == sorted(
        p.rsplit("/", 1)[1] for p in written
    )


def test_a_cache_larger_than_the_limit_is_not_built_and_the_teacher_runs_live(small, isolated_cache, tmp_path, capsys):
    from orchestrator.config.schema import apply_overrides
    from orchestrator.distill.registry import Needs
    from orchestrator.teacher_outputs import estimated_bytes

    cfg, data = small
    model = _teacher(1)
    save_model_checkpoint(tmp_path / "t.pt", model, "tiny_teacher", data, {})
    needs = Needs(frozenset({"logits"}), ("stage1",))
    size = estimated_bytes(model, data, needs)
    stage1 = model(data.train_eval[0][0][None]).features[0][0].numel()
    assert size == 4 * (data.num_classes + stage1) * len(data.train_eval)
    tight = apply_overrides(cfg, {"teacher.cache_max_gb": 0.5 * size / 2**30})
    assert teacher_outputs_file(str(tmp_path / "t.pt"), tight, data, needs) is None
    assert "the teacher runs live instead" in capsys.readouterr().out
    assert teacher_outputs_file(str(tmp_path / "t.pt"), cfg, data, needs) is not None


def test_sweep_caches_the_vector_fields_when_feature_maps_exceed_the_limit(small, isolated_cache, tmp_path, capsys):
    """A space of KD and AT whose AT feature maps exceed ``teacher.cache_max_gb``: the sweep caches logits and
    embedding only; KD's trials are covered by it, AT's are not (they run the teacher live)."""
    from orchestrator.config.schema import apply_overrides
    from orchestrator.distill import registry
    from orchestrator.sweep.plan import make_plan
    from orchestrator.sweep.search.space import possible_configs
    from orchestrator.teacher_outputs import outputs_for

    cfg, data = small
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  distill.method: {type: categorical, choices: [kd, at]}\n")
    model = _teacher(3)
    save_model_checkpoint(tmp_path / "t" / "teacher.pt", model, "tiny_teacher", data, {})
    vectors = 4 * len(data.train_eval) * sum(t[0].numel() for t in (model(data.train_eval[0][0][None]).logits,
                                                                    model(data.train_eval[0][0][None]).embedding))
    cfg = apply_overrides(cfg, {"sweep.search_space": str(space), "sweep.storage_path": str(tmp_path / "runs"),
                                "teacher.cache_max_gb": 2 * vectors / 2**30})  # vectors fit, feature maps don't
    plan = make_plan(cfg, len(data.train))
    [path] = outputs_for([str(tmp_path / "t" / "teacher.pt")], cfg, possible_configs(plan.space, cfg), plan.max_epochs, data)
    printed = capsys.readouterr().out
    assert "trials of at read feature maps and run the teacher live" in printed
    assert "trying the vector fields alone" in printed and "the teacher runs live instead" not in printed
    cache = CachedTeacherOutputs.load(path)
    assert not cache.features
    assert cache.covers(registry.teacher_needs(apply_overrides(cfg, {"distill.method": "kd"}).distill))
    assert not cache.covers(registry.teacher_needs(apply_overrides(cfg, {"distill.method": "at"}).distill))


@pytest.mark.parametrize("method", ["kd", "at"])
def test_a_trial_uses_the_cache_only_when_it_holds_what_its_objective_reads(method, small, isolated_cache, tmp_path,
                                                                             ray_session, monkeypatch):
    """Given a cache of logits only, a KD trial reads it (the teacher file is never loaded) and an AT trial
    loads the live teacher."""
    from orchestrator.run import worker
    from orchestrator.config.schema import apply_overrides
    from orchestrator.distill.registry import Needs
    from orchestrator.run.launcher import launch

    cfg, data = small
    model = _teacher(4)
    save_model_checkpoint(tmp_path / "teacher.pt", model, "tiny_teacher", data, {})
    logits = teacher_outputs_file(str(tmp_path / "teacher.pt"), cfg, data, Needs(frozenset({"logits"})))
    loaded = []
    real_load = worker.load_teacher
    monkeypatch.setattr(worker, "load_teacher", lambda *a, **k: loaded.append(a[0]) or real_load(*a, **k))
    cfg = apply_overrides(cfg, {"distill.method": method, "train.epochs": 1})
    result = launch(cfg, {"teachers": [str(tmp_path / "teacher.pt")], "teacher_outputs": [str(logits)]},
                    name=f"cache-{method}", storage_path=str(tmp_path / "train"), in_tune=False)
    assert result.error is None and result.metrics["epoch"] == 1
    assert loaded == ([] if method == "kd" else [str(tmp_path / "teacher.pt")])
