"""The CRD paper's feature and relation baselines (FitNet, AT, SP, CC, VID, RKD) together: the paper's
settings, knob checks, stage choices on the zoo's models, ensembles, the teacher-output cache, digits runs."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
import torch

from baseline_inputs import B, STUDENT, TEACHER, build_term, digits_accuracy, outputs
from distill_helpers import distill_config
from orchestrator.config.schema import ConfigError, Config, apply_overrides, load_config
from orchestrator.distill import build_objective, paper_defaults, registry
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import compute_teacher_outputs
from orchestrator.models import build_model, model_names
from orchestrator.models.base import Shapes, probe_shapes
from orchestrator.sweep.search.space import load_space, paper_points

TERMS = ("fitnet", "at", "sp", "cc", "vid", "rkd")
CRD_PAPER_PAIRS = [  # (teacher, student) of the CRD paper's CIFAR-100 tables (Tables 1 and 2)
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
    ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
]
# RepDistiller scripts/run_cifar_distill.sh (-b) at commit b84f547c5db6a35318d4671d7d5c4de74c822403
PAPER_WEIGHTS = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "cc": 0.02, "vid": 1.0, "rkd": 1.0}


@pytest.mark.parametrize("name", TERMS)
def test_presets_are_ce_plus_the_term_at_the_paper_settings_which_are_the_defaults(name):
    assert registry.method_terms(name) == ("ce", name)
    values = paper_defaults(name)
    assert values["distill.ce.weight"] == 1.0 and values[f"distill.{name}.weight"] == PAPER_WEIGHTS[name]
    for key, value in values.items():  # the config's defaults are the paper's values
        node = Config()
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key
    spec = registry.term(name)
    assert spec.multi_teacher == "per_teacher" and spec.cacheable
    assert registry.supports_teachers(distill_config(name), 3) is None


@pytest.mark.parametrize("name", TERMS)
def test_each_search_space_starts_at_the_paper_settings(name):
    cfg = load_config(None, [])
    (point,) = paper_points(load_space(name, cfg, num_train_samples=54_000), cfg)
    assert point.method == name and point.deviations == {}
    expected = {k: v for k, v in paper_defaults(name).items() if k in point.params}
    assert expected and all(point.params[k] == v for k, v in expected.items())
    assert f"distill.{name}.weight" in expected


@pytest.mark.parametrize("override, key", [
    ("distill.fitnet.stage=1::", "distill.fitnet.stage"),
    ("distill.fitnet.hint_epochs=-1", "distill.fitnet.hint_epochs"),
    ("distill.fitnet.weight=-1", "distill.fitnet.weight"),
    ("distill.at.p=0", "distill.at.p"),
    ("distill.at.stages=a b", "distill.at.stages"),
    ("distill.sp.stages=", "distill.sp.stages"),
    ("distill.cc.feat_dim=0", "distill.cc.feat_dim"),
    ("distill.vid.init_pred_var=0.000001", "distill.vid.init_pred_var"),
    ("distill.rkd.angle_weight=-2", "distill.rkd.angle_weight"),
    ("distill.rkd.distance_weight=inf", "distill.rkd.distance_weight"),
])
def test_impossible_knobs_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_a_stage_knob_takes_a_position_from_the_command_line():
    cfg = load_config(None, ["distill.method=at", "distill.at.stages=-1", "distill.fitnet.stage=stage2"])
    assert cfg.distill.at.stages == "-1" and cfg.distill.fitnet.stage == "stage2"
    assert registry.teacher_needs(cfg.distill).stages == ("-1",)


@cache
def _shapes(name: str, channels: int, size: int) -> Shapes:
    return probe_shapes(build_model(name, 10, channels), channels, size)


@cache
def _term_config(name: str):
    return distill_config(name)  # the zoo test builds each term some 400 times; building reads, never changes it


def _build(name: str, student: Shapes, teacher: Shapes):
    return build_objective(_term_config(name), num_classes=10, student=student, teachers=[teacher],
                           train_labels=torch.arange(10))


def _check_builds_and_runs(name: str, student: Shapes, teacher: Shapes) -> None:
    objective = _build(name, student, teacher)
    s, (t,) = outputs(student=student, teachers=(teacher,))
    value = objective(s, [t], torch.arange(B), torch.arange(B))[name]
    assert torch.isfinite(value), (name, value)


@pytest.mark.parametrize("teacher, student, channels, size", [
    ("cnn_teacher", "cnn_student_tiny", 1, 28),  # the default pair on Fashion-MNIST
    ("tiny_teacher", "tiny_student", 1, 8),  # the digits pair
])
@pytest.mark.parametrize("name", TERMS)
def test_the_default_stage_choices_work_on_the_default_pairs(name, teacher, student, channels, size):
    _check_builds_and_runs(name, _shapes(student, channels, size), _shapes(teacher, channels, size))


def test_on_the_cifar_resnets_the_stages_are_repdistillers():
    """resnet32x4 -> resnet8x4 at 32x32: features [stem, stage1-3] = RepDistiller's feat[:-1]."""
    student, teacher = _shapes("resnet8x4", 3, 32), _shapes("resnet32x4", 3, 32)
    kw = dict(num_classes=100, student=student, teachers=[teacher], train_labels=torch.arange(100))
    objective = build_objective(distill_config("fitnet+at+sp+vid"), **kw)
    terms = objective.terms
    assert terms["fitnet"].pairs == [(2, 2)]  # --hint_layer 2
    assert terms["at"].pairs == terms["vid"].pairs == [[(1, 1), (2, 2), (3, 3)]]  # feat[1:-1]
    assert terms["sp"].pairs == [[(3, 3)]]  # feat[-2]


@pytest.mark.slow
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_every_zoo_pair_builds_every_term_or_fitnet_refuses_by_name(channels, size):
    """This project's own architectures (the torchvision adapters are left out: their stages are found by
    tracing, at ImageNet sizes); FitNet may refuse a pair whose hint maps no convolution bridges (as
    RepDistiller's ConvReg would), never one of the CRD paper's pairs. Building checks the stage pairs and
    connector shapes; the default pairs above also run a batch."""
    names = [n for n in model_names() if not n.startswith("tv_")]
    refused = []
    for teacher, student, name in itertools.product(names, names, TERMS):
        try:
            _build(name, _shapes(student, channels, size), _shapes(teacher, channels, size))
        except ValueError as exc:
            assert name == "fitnet" and str(exc).startswith("distill.fitnet.stage: "), (teacher, student, exc)
            refused.append((teacher, student))
    assert not set(refused) & set(CRD_PAPER_PAIRS), sorted(set(refused) & set(CRD_PAPER_PAIRS))


@pytest.mark.parametrize("name", TERMS)
def test_several_teachers_are_weighted(name):
    other = Shapes(20, {"stage1": (5, 8, 8), "stage2": (10, 4, 4), "stage3": (10, 2, 2)})
    both = build_term(f"ce+{name}", teachers=(TEACHER, other), teacher_weights=[1.0, 3.0])
    singles = [build_term(f"ce+{name}", teachers=(t,)) for t in (TEACHER, other)]
    student, teachers = outputs(teachers=(TEACHER, other))
    for m, single in enumerate(singles):  # give each the parts of teacher m's copy (container.<m>.* in the ensemble)
        own = single.terms[name].state_dict()
        for key, value in both.terms[name].state_dict().items():
            parts = key.split(".")
            if len(parts) > 1 and parts[1] == str(m):
                own[".".join([parts[0], "0", *parts[2:]])] = value
        single.terms[name].load_state_dict(own)
    both.eval()
    for s in singles:
        s.eval()
    y, idx = torch.arange(B) % 10, torch.arange(B)
    value = both(student, teachers, y, idx)[name]
    parts = [s(student, [t], y, idx)[name] for s, t in zip(singles, teachers)]
    assert value.item() == pytest.approx(0.25 * parts[0].item() + 0.75 * parts[1].item(), rel=1e-5)


def test_selector_needs_reach_the_teacher_output_cache(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+at+fitnet", "distill.fitnet.stage": "0", "train.epochs": 1})
    needs = registry.teacher_needs(cfg.distill)
    assert needs.stages == ("1:", "0")
    cached = compute_teacher_outputs(teacher, data.train_eval, 256, needs=needs)
    assert sorted(cached.features) == ["stage1", "stage2"] and cached.logits is None
    trainer = Learner(cfg, data, [], teacher_outputs=[cached])
    metrics = trainer.train_one_epoch()
    assert metrics["train/loss_at"] > 0 and metrics["train/loss_fitnet"] > 0


@pytest.mark.parametrize("name", TERMS)
def test_each_baseline_trains_the_digits_student_well_above_chance(digits, name):
    """At the paper's settings (a short run; chance is 0.1)."""
    assert digits_accuracy(digits, name) > 0.4
