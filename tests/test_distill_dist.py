"""DIST (Huang et al. 2022): pinned to the authors' implementation, closed forms, gradients, ensembles, digits.

The pinned values are the authors' ``DIST`` loss (github.com/hunto/DIST_KD at commit
2418f18b1fedd7c2646a7b1b9a27d5c674c2170b, whose ``classification`` submodule is
github.com/hunto/image_classification_sota at commit d9662f7df68fe46b973c4580b7c9b896cedcd301,
``lib/models/losses/dist_kd.py``) evaluated in float64 on the inputs of :func:`_pinned_inputs`:

    torch.manual_seed(0)
    student = torch.randn(8, 10) * 2.0
    teacher = torch.randn(8, 10) * 2.0
    labels = torch.randint(0, 10, (8,))   # drawn to keep the stream of tests/test_distill_dkd.py
    teacher2 = torch.randn(8, 10) * 3.0

The ensemble value is the reference's ``inter_class_relation`` + ``intra_class_relation`` (times tau^2) on
the student's softmax and 0.25 * softmax(teacher / 4) + 0.75 * softmax(teacher2 / 4); the standardised value
is the reference's ``DIST(1, 1, tau=2)`` on both logits z-scored by ``normalize`` of
sunshangquan/logit-standardization-KD (commit f6e5aa5172bad618e801163c3385322eea673754,
``mdistiller/distillers/KD.py``).
"""

from __future__ import annotations

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.dist import DIST, DISTKnobs, dist_loss, pearson
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput
from orchestrator.sweep.search.space import load_space, paper_points

# (beta, gamma, tau) -> the authors' DIST on the pinned inputs.
REFERENCE = {
    (1.0, 1.0, 4.0): 30.22108437188511,  # the paper's CIFAR-100 setting
    (1.0, 1.0, 1.0): 1.7178934359164029,  # its ImageNet setting
    (2.0, 0.5, 2.0): 9.134437974087495,
}
REFERENCE_ENSEMBLE_1_3 = 27.31447107308687
REFERENCE_STANDARDIZED_T2 = 7.398082115935463


def _pinned_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    student = torch.randn(8, 10) * 2.0
    teacher = torch.randn(8, 10) * 2.0
    torch.randint(0, 10, (8,))
    teacher2 = torch.randn(8, 10) * 3.0
    return student, teacher, teacher2


def _out(logits) -> ModelOutput:
    logits = torch.as_tensor(logits)
    return ModelOutput([], torch.zeros(logits.shape[0], 4), logits)


@pytest.mark.parametrize("setting", sorted(REFERENCE))
def test_dist_matches_the_authors_implementation(setting):
    student, teacher, _ = _pinned_inputs()
    assert dist_loss(student.double(), teacher.double(), *setting).item() == pytest.approx(REFERENCE[setting], rel=1e-9)
    assert dist_loss(student, teacher, *setting).item() == pytest.approx(REFERENCE[setting], rel=1e-6)


def test_ensemble_dist_reads_the_weighted_mean_prediction():
    student, teacher, teacher2 = _pinned_inputs()
    value = dist_loss(student.double(), [teacher.double(), teacher2.double()], 1.0, 1.0, 4.0, weights=[1.0, 3.0])
    assert value.item() == pytest.approx(REFERENCE_ENSEMBLE_1_3, rel=1e-9)
    d = build(distill_config("ce+dist"), student_dim=4, teacher_dims=[4, 4], train_labels=torch.arange(10),
              teacher_weights=[1.0, 3.0])
    terms = d(_out(student), [_out(teacher), _out(teacher2)], torch.arange(8), torch.arange(8))
    assert terms["dist"].item() == pytest.approx(2.0 * REFERENCE_ENSEMBLE_1_3, rel=1e-6)  # paper weight 2


def test_standardized_dist_matches_the_reference_on_z_scored_logits():
    student, teacher, _ = _pinned_inputs()
    value = dist_loss(student.double(), teacher.double(), 1.0, 1.0, 2.0, standardize=True)
    assert value.item() == pytest.approx(REFERENCE_STANDARDIZED_T2, rel=1e-9)


def test_identical_or_affinely_related_predictions_give_zero():
    student = _pinned_inputs()[0].double()
    # exactly 0 but for the 1e-8 that keeps the correlation of a constant vector finite (as the reference's)
    assert dist_loss(student, student.clone()).item() == pytest.approx(0.0, abs=1e-4)
    assert dist_loss(student.float(), student.float()).item() == pytest.approx(0.0, abs=1e-4)
    # standardised: any per-row shift and positive scale of the logits leaves the loss at 0
    shifted = 3.0 * student + torch.randn(8, 1, dtype=torch.float64)
    assert dist_loss(student, shifted, standardize=True).item() == pytest.approx(0.0, abs=1e-4)
    assert dist_loss(student, shifted).item() > 0.1  # not without standardisation


def test_inter_and_intra_relations_by_hand():
    # beta only: 1 - mean row correlation; gamma only: 1 - mean column correlation of the probabilities
    s, t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, -2.0]])
    p_s, p_t = s.double().softmax(1), t.double().softmax(1)

    def corr(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    inter = 1 - sum(corr(p_s[i], p_t[i]) for i in range(2)) / 2
    intra = 1 - sum(corr(p_s[:, c], p_t[:, c]) for c in range(3)) / 3
    # equal up to the 1e-8 that guards the correlation's denominator
    assert dist_loss(s.double(), t.double(), 1.0, 0.0, 1.0).item() == pytest.approx(inter, rel=1e-6)
    assert dist_loss(s.double(), t.double(), 0.0, 1.0, 1.0).item() == pytest.approx(intra, rel=1e-6)
    assert dist_loss(s.double(), t.double(), 0.0, 1.0, 3.0).item() == pytest.approx(
        9 * (1 - pearson((s.double() / 3).softmax(1), (t.double() / 3).softmax(1), 0).mean().item()), rel=1e-9)


def test_a_batch_of_one_has_a_constant_intra_class_relation():
    s, t = torch.randn(1, 5, requires_grad=True), torch.randn(1, 5)
    intra = dist_loss(s, t, 0.0, 1.0, 1.0)
    assert intra.item() == pytest.approx(1.0) and torch.isfinite(intra)
    intra.backward()
    assert torch.isfinite(s.grad).all()


def test_gradients_reach_the_student_never_the_teacher():
    student, teacher, _ = _pinned_inputs()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    d = build(distill_config("dist", dist__standardize=True), student_dim=4, teacher_dims=[4],
              train_labels=torch.arange(10))
    terms = d(_out(student), _out(teacher), torch.arange(8), torch.arange(8))
    assert list(terms) == ["ce", "dist"]
    terms["dist"].backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("kwargs, name", [({"beta": -1.0}, "beta"), ({"gamma": float("nan")}, "gamma"),
                                          ({"temperature": 0.0}, "temperature"), ({"weight": -2.0}, "weight"),
                                          ({"standardize": 1}, "standardize")])
def test_bad_knobs_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DISTKnobs(**kwargs)


def test_bad_config_values_name_the_key():
    with pytest.raises(ConfigError, match="distill.dist.temperature"):
        load_config(None, ["distill.method=dist", "distill.dist.temperature=-1"])


def test_logits_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="logits"):
        dist_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_builder_reads_the_dist_section_and_the_paper_defaults():
    d = build(distill_config("dist", dist__beta=2.0, dist__gamma=0.5, dist__temperature=3.0, dist__weight=1.5),
              student_dim=4, teacher_dims=[4], train_labels=torch.arange(10))
    term = d.terms["dist"]
    assert type(term) is DIST and d.weights == {"ce": 1.0, "dist": 1.5}
    assert (term.beta, term.gamma, term.temperature, term.standardize) == (2.0, 0.5, 3.0, False)
    assert paper_defaults("dist") == {"distill.ce.weight": 1.0, "distill.dist.weight": 2.0, "distill.dist.beta": 1.0,
                                      "distill.dist.gamma": 1.0, "distill.dist.temperature": 4.0}
    knobs = DISTKnobs()
    assert (knobs.beta, knobs.gamma, knobs.temperature, knobs.weight) == (1.0, 1.0, 4.0, 2.0)


def test_dist_learns_digits(digits):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": "dist"}), data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert {k for k in metrics if k.startswith("train/loss_")} == {"train/loss_ce", "train/loss_dist"}
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1


def test_the_dist_space_starts_at_the_paper_point():
    cfg = load_config(None, [])
    (point,) = paper_points(load_space("dist", cfg, num_train_samples=54_000), cfg)
    assert point.method == "dist" and point.deviations == {}
    assert {k: v for k, v in point.params.items() if k != "train.lr"} == paper_defaults("dist")
