"""The feature-based CRD-paper baselines (PKT, NST, KDSVD, FSP, AB, FT) in the Learner: digits runs at the
paper weights, the pre-stage of AB/FSP/FT end to end, stage selectors through the teacher-output cache."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config.schema import Config, apply_overrides
from orchestrator.distill import build_objective, registry
from orchestrator.distill.features import resolve
from orchestrator.distill.stages import select_all
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import compute_teacher_outputs
from orchestrator.models import build_model
from orchestrator.models.base import probe_shapes

TERMS = ("pkt", "nst", "kdsvd", "fsp", "ab", "ft")
TWO_STAGES = {"nst": "stages", "kdsvd": "stages", "fsp": "stages", "ab": "stages"}  # the tiny models have 2


def _config(cfg, name: str, **values):
    stages = {f"distill.{name}.{TWO_STAGES[name]}": "-2,-1"} if name in TWO_STAGES else {}
    return apply_overrides(cfg, {"distill.method": f"ce+{name}", **stages, **values})


@pytest.fixture
def one_thread():
    """Batched small SVDs and convolutions are fastest on one thread on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", TERMS)
def test_each_term_trains_the_digits_student_well_above_chance(digits, one_thread, name):
    cfg, data, teacher = digits
    cfg = _config(cfg, name)
    trainer = Learner(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert f"train/loss_{name}" in metrics and all(v == v for v in metrics.values())
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.4, test  # chance is 0.1; the paper weights dominate CE on these tiny models


def test_pre_stage_losses_decrease_then_distillation_runs_from_a_cached_teacher(digits, one_thread):
    """FT's paraphraser trains for init_epochs inside the first reported epoch (prestage/*), then stays frozen."""
    cfg, data, teacher = digits
    cfg = _config(cfg, "ft", **{"distill.ft.init_epochs": 3, "train.epochs": 2})
    needs = registry.teacher_needs(cfg.distill)
    assert needs.stages == ("last",)
    cache = compute_teacher_outputs(teacher, data.train_eval, 256, needs=needs)
    assert list(cache.features) == [cache.stage_names[-1]]  # the selector resolved to the teacher's name
    trainer = Learner(cfg, data, [], teacher_outputs=[cache])
    term = trainer.objective.terms["ft"]
    per_epoch: list[list[float]] = [[] for _ in range(3)]
    steps = len(trainer.train_loader)
    original = term.pre_stage_loss

    def recording(batch):
        value = original(batch)
        calls = sum(len(v) for v in per_epoch)
        per_epoch[calls // steps].append(float(value.detach()))
        return value

    term.pre_stage_loss = recording
    first = trainer.train_one_epoch()
    paraphraser = {k: v.clone() for k, v in term.paraphrasers.state_dict().items()}
    translator = {k: v.clone() for k, v in term.translators.state_dict().items()}
    second = trainer.train_one_epoch()
    means = [sum(v) / len(v) for v in per_epoch]
    assert [len(v) for v in per_epoch] == [steps] * 3 and means[2] < means[1] < means[0], means
    assert first["prestage/epochs"] == 3 and first["prestage/loss_ft"] == pytest.approx(sum(means) / 3, rel=0.02)  # per image
    assert "prestage/epochs" not in second and second["train/loss_ft"] > 0  # ASHA's epochs are distillation's
    assert all(torch.equal(v, term.paraphrasers.state_dict()[k]) for k, v in paraphraser.items())
    assert any(not torch.equal(v, term.translators.state_dict()[k]) for k, v in translator.items())


def test_ab_and_fsp_pre_stages_train_the_student(digits, one_thread):
    cfg, data, teacher = digits
    for name in ("ab", "fsp"):
        trainer = Learner(_config(cfg, name, **{f"distill.{name}.init_epochs": 2}), data, [teacher])
        before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        metrics = trainer._pre_stage()
        assert metrics["prestage/epochs"] == 2 and metrics[f"prestage/loss_{name}"] > 0
        changed = [k for k, v in trainer.student.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("stages.") and k.endswith("weight") for k in changed)
        assert not any(k.startswith("classifier") for k in changed)  # AB/FSP reach the feature layers only


def test_stage_selectors_resolve_by_name_last_or_from_the_end():
    names = ("stem", "stage1", "stage2", "stage3")
    assert [resolve(s, names) for s in ("stage1", "last", "-1", "-4", "-5", "first", "0", "1:")] == [
        1, 3, 3, 0, None, None, 0, None]
    assert select_all(("-1", "stage3", "-2"), names) == ("stage2", "stage3")  # model order, each once
    with pytest.raises(ValueError, match="no stage at position -9"):
        select_all(("-9",), names)


def test_every_term_takes_several_teachers():
    for name in TERMS:
        assert registry.term(name).multi_teacher == "per_teacher"
        assert registry.supports_teachers(_config(Config(), name).distill, 3) is None


@pytest.mark.parametrize("teacher, student, size", [
    ("cnn_teacher", "cnn_student_tiny", 28), ("cnn_teacher_wide", "cnn_student_small", 28),
    ("resnet32x4", "resnet8x4", 32), ("resnet56", "resnet20", 32),
])
def test_default_stages_work_for_zoo_pairs(one_thread, teacher, student, size):
    """Every term at its default stages builds for these pairs and gives finite gradients to the student."""
    channels = 1 if size == 28 else 3
    models = {n: build_model(n, 10, channels) for n in (teacher, student)}
    shapes = {n: probe_shapes(m, channels, size) for n, m in models.items()}
    images = torch.randn(2, channels, size, size)
    with torch.no_grad():
        t_out = models[teacher].eval()(images)
    s_out = models[student](images)
    for name in TERMS:
        cfg = apply_overrides(Config(), {"distill.method": name, f"distill.{name}.weight": 1.0})
        objective = build_objective(cfg.distill, num_classes=10, student=shapes[student], teachers=[shapes[teacher]],
                                    train_labels=torch.arange(10))
        value = objective(s_out, [t_out], torch.arange(2), torch.arange(2))[name]
        grads = torch.autograd.grad(value, [*s_out.features, s_out.embedding], allow_unused=True, retain_graph=True)
        assert torch.isfinite(value) and all(g is None or torch.isfinite(g).all() for g in grads), name


def test_search_spaces_load_and_start_from_the_paper_point():
    from orchestrator.sweep.search.space import load_space, paper_points

    cfg = Config()
    for name in TERMS:
        (point,) = paper_points(load_space(name, cfg, num_train_samples=54_000), cfg)
        assert point.method == f"ce+{name}"
        assert set(point.deviations) <= {f"distill.{name}.init_epochs"}  # 30 pre-stage epochs snap into range
