"""DKD (Zhao et al. 2022): pinned to the authors' implementation, closed forms, gradients, warm-up, digits.

The pinned values are mdistiller's ``dkd_loss`` (github.com/megvii-research/mdistiller,
``mdistiller/distillers/DKD.py`` at commit a08d46f10d6102bd6e3f258ca5ac880b020ea259) evaluated in
float64 on the inputs of :func:`_pinned_inputs` (float32 tensors, cast to float64 for the reference):

    torch.manual_seed(0)
    student = torch.randn(8, 10) * 2.0
    teacher = torch.randn(8, 10) * 2.0
    labels = torch.randint(0, 10, (8,))   # [0, 6, 7, 6, 9, 1, 6, 4]
"""

from __future__ import annotations

import math

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.config.schema import apply_overrides, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.dkd import DKD, dkd_loss
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput
from orchestrator.sweep.search.space import load_space, paper_points

# (alpha, beta, temperature) -> mdistiller's dkd_loss on the pinned inputs.
REFERENCE = {
    (1.0, 8.0, 4.0): 27.720858404657964,  # the paper's CIFAR-100 setting
    (0.5, 2.0, 1.0): 5.131060037319303,
    (2.0, 1.0, 8.0): 4.515335227749003,
}


def _pinned_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = torch.randn(8, 10) * 2.0
    teacher = torch.randn(8, 10) * 2.0
    labels = torch.randint(0, 10, (8,))
    assert labels.tolist() == [0, 6, 7, 6, 9, 1, 6, 4]
    return student, teacher, labels


def _out(logits) -> ModelOutput:
    logits = torch.as_tensor(logits)
    return ModelOutput([], torch.zeros(logits.shape[0], 4), logits)


@pytest.mark.parametrize("setting", sorted(REFERENCE))
def test_dkd_matches_the_authors_implementation(setting):
    student, teacher, labels = _pinned_inputs()
    value = dkd_loss(student.double(), teacher.double(), labels, *setting)
    assert value.item() == pytest.approx(REFERENCE[setting], rel=1e-6)
    # float32 rounding alone (near-uniform probabilities at T = 8 cost the most digits)
    assert dkd_loss(student, teacher, labels, *setting).item() == pytest.approx(REFERENCE[setting], rel=2e-5)


def test_identical_logits_give_zero():
    student, _, labels = _pinned_inputs()
    assert dkd_loss(student, student.clone(), labels, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_beta_zero_is_the_binary_target_class_kl():
    s, t, temp = [1.0, 2.0, 3.0, -1.0], [3.0, 1.0, 0.0, 0.5], 2.0
    label = 1

    def p_target(row):
        e = [math.exp(x / temp) for x in row]
        return e[label] / sum(e)

    b_s, b_t = p_target(s), p_target(t)
    tckd = b_t * math.log(b_t / b_s) + (1 - b_t) * math.log((1 - b_t) / (1 - b_s))
    f64 = torch.float64
    value = dkd_loss(torch.tensor([s], dtype=f64), torch.tensor([t], dtype=f64), torch.tensor([label]), 1.5, 0.0, temp)
    assert value.item() == pytest.approx(1.5 * temp**2 * tckd, rel=1e-6)


def test_gradients_reach_the_student_never_the_teacher():
    student, teacher, labels = _pinned_inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    d = build(distill_config("dkd", dkd__warmup=0), student_dim=4, teacher_dims=[4], train_labels=labels,
              num_classes=10)
    terms = d(_out(student), _out(teacher), labels, torch.arange(8))
    assert set(terms) == {"ce", "dkd"}
    terms["dkd"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"alpha": -0.1}, "alpha"),
        ({"beta": float("inf")}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 2.5}, "warmup"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DKD(**kwargs)


def test_logits_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="logits"):
        dkd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]), 1.0, 1.0, 1.0)


def test_warmup_ramps_the_dkd_term_linearly():
    student, teacher, labels = _pinned_inputs()
    full = dkd_loss(student, teacher, labels, 1.0, 8.0, 4.0).item()
    d = build(distill_config("dkd", gamma=1.0, dkd__alpha=1.0, dkd__beta=8.0, dkd__temperature=4.0, dkd__warmup=4),
              student_dim=4, teacher_dims=[4], train_labels=labels, num_classes=10)
    ce = None
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
        d.set_epoch(epoch)
        terms = d(_out(student), _out(teacher), labels, torch.arange(8))
        assert terms["dkd"].item() == pytest.approx(factor * full, rel=1e-6)
        ce = terms["ce"].item() if ce is None else ce
        assert terms["ce"].item() == pytest.approx(ce)  # the CE term is not ramped
    d_off = build(distill_config("dkd", dkd__warmup=0), student_dim=4, teacher_dims=[4], train_labels=labels,
                  num_classes=10)
    assert d_off(_out(student), _out(teacher), labels, torch.arange(8))["dkd"].item() == pytest.approx(full, rel=1e-6)


def test_builder_reads_the_dkd_section_and_refuses_several_teachers():
    cfg = distill_config("dkd", gamma=0.5, dkd__alpha=1.5, dkd__beta=6.0, dkd__temperature=2.0, dkd__warmup=3)
    kw = dict(num_classes=4, student_dim=8, train_labels=torch.arange(20) % 4)
    d = build(cfg, teacher_dims=[6], **kw)
    term = d.terms["dkd"]
    assert type(term) is DKD and d.weights == {"ce": 0.5, "dkd": 1.0}
    assert (term.alpha, term.beta, term.temperature, term.warmup) == (1.5, 6.0, 2.0, 3)
    with pytest.raises(ValueError, match="dkd support one teacher only"):
        build(cfg, teacher_dims=[6, 6], **kw)


def test_paper_points_of_the_dkd_space_are_the_paper_values():
    cfg = load_config(None, [])
    (point,) = paper_points(load_space("dkd", cfg, num_train_samples=54_000), cfg)
    assert point.method == "dkd" and point.deviations == {}
    assert point.params == {
        "train.lr": cfg.train.lr,
        "distill.dkd.beta": 8.0,
        "distill.dkd.temperature": 4.0,
        "distill.dkd.alpha": 1.0,
        "distill.dkd.warmup": 20,
    }
    assert paper_defaults("dkd")["distill.dkd.warmup"] == 20 == cfg.distill.dkd.warmup


def test_dkd_learns_digits_and_its_warmup_follows_the_trainer(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "dkd", "distill.dkd.warmup": 2})
    trainer = Learner(cfg, data, [teacher])
    factors = []
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
        factors.append(trainer.objective.terms["dkd"].warmup_factor)
    assert factors == [0.5] + [1.0] * (cfg.train.epochs - 1)
    assert {k for k in metrics if k.startswith("train/loss_")} == {"train/loss_ce", "train/loss_dkd"}
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1
