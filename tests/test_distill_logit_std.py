"""Logit standardisation (Sun et al., CVPR 2024) as an option of KD, ensemble KD, DKD and DIST.

The pinned values are the authors' ``kd_loss`` and ``dkd_loss`` with ``logit_stand=True``
(github.com/sunshangquan/logit-standardization-KD at commit f6e5aa5172bad618e801163c3385322eea673754,
``mdistiller/distillers/KD.py`` and ``DKD.py``) evaluated in float64 on the inputs of
tests/test_distill_dkd.py (``torch.manual_seed(0)``; student, teacher = ``randn(8, 10) * 2``; labels
``randint(0, 10, (8,))``). DIST's standardised value is pinned in tests/test_distill_dist.py.
"""

from __future__ import annotations

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.dkd import dkd_loss
from orchestrator.distill.kd import ensemble_kd_loss, kd_loss
from orchestrator.distill.logit_std import tempered, z_score
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput
from orchestrator.sweep.search.space import load_space, paper_points

KD_REFERENCE = {2.0: 0.8558410207347803, 4.0: 0.8631482282703432, 1.0: 0.8183738072815014}  # base T -> value
DKD_REFERENCE = {  # (alpha, beta, base T) -> value
    (9.0, 72.0, 2.0): 59.156852835992346,  # the paper's "DKD+Ours" on CIFAR-100 (alpha, beta times 9; T 2)
    (1.0, 8.0, 4.0): 6.652337124397145,
    (0.5, 2.0, 1.0): 1.5749111431444671,
}


def _pinned_inputs():
    torch.manual_seed(0)
    student = torch.randn(8, 10) * 2.0
    teacher = torch.randn(8, 10) * 2.0
    labels = torch.randint(0, 10, (8,))
    return student, teacher, labels


def _out(logits) -> ModelOutput:
    return ModelOutput([], torch.zeros(logits.shape[0], 4), logits)


@pytest.mark.parametrize("temperature", sorted(KD_REFERENCE))
def test_kd_with_standardisation_matches_the_authors_code(temperature):
    student, teacher, _ = _pinned_inputs()
    value = kd_loss(student, teacher, temperature, standardize=True)  # KD computes in float32
    assert value.item() == pytest.approx(KD_REFERENCE[temperature], rel=1e-6)


@pytest.mark.parametrize("setting", sorted(DKD_REFERENCE))
def test_dkd_with_standardisation_matches_the_authors_code(setting):
    student, teacher, labels = _pinned_inputs()
    assert dkd_loss(student.double(), teacher.double(), labels, *setting, standardize=True).item() == pytest.approx(
        DKD_REFERENCE[setting], rel=1e-9)
    assert dkd_loss(student, teacher, labels, *setting, standardize=True).item() == pytest.approx(
        DKD_REFERENCE[setting], rel=2e-6)


def test_z_score_rows_have_mean_zero_and_unbiased_std_one():
    x = torch.randn(5, 7, dtype=torch.float64) * 4 + 2
    z = z_score(x)
    torch.testing.assert_close(z.mean(1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(z.std(1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(z_score(3 * x - 5), z)  # invariant to a positive scale and a shift
    assert torch.equal(tempered(x, 2.0), x / 2.0)  # off: the plain tempered logits, nothing else
    torch.testing.assert_close(tempered(x, 2.0, standardize=True), z / 2.0)


def test_standardised_kd_ignores_the_logit_range():
    student, teacher, labels = _pinned_inputs()
    assert kd_loss(student, 5.0 * student + 1.0, 2.0, standardize=True).item() == pytest.approx(0.0, abs=1e-5)
    assert dkd_loss(student, 5.0 * student + 1.0, labels, 1.0, 8.0, 2.0, standardize=True).item() == pytest.approx(
        0.0, abs=1e-5)
    assert kd_loss(student, 5.0 * student + 1.0, 2.0).item() > 1.0


def test_ensemble_kd_standardises_every_teacher():
    student, teacher, _ = _pinned_inputs()
    # two copies of one teacher at different logit scales are one teacher once standardised
    value = ensemble_kd_loss(student, [teacher, 4.0 * teacher - 2.0], 2.0, [1.0, 3.0], standardize=True)
    assert value.item() == pytest.approx(KD_REFERENCE[2.0], rel=1e-5)
    d = build(distill_config("kd", kd__standardize=True, kd__temperature=2.0, kd__weight=1.0), student_dim=4,
              teacher_dims=[4, 4], train_labels=torch.arange(10))
    terms = d(_out(student), [_out(teacher), _out(teacher.clone())], torch.arange(8), torch.arange(8))
    assert terms["kd"].item() == pytest.approx(KD_REFERENCE[2.0], rel=1e-5)


def test_off_by_default_and_bit_identical_to_the_plain_terms():
    student, teacher, labels = _pinned_inputs()
    cfg = load_config(None, [])
    assert cfg.distill.kd.standardize is False and cfg.distill.dkd.standardize is False
    assert cfg.distill.dist.standardize is False
    assert torch.equal(kd_loss(student, teacher, 4.0), kd_loss(student, teacher, 4.0, standardize=False))
    kd = build(distill_config("kd"), student_dim=4, teacher_dims=[4], train_labels=torch.arange(10))
    assert torch.equal(kd(_out(student), _out(teacher), labels, torch.arange(8))["kd"],
                       1.0 * kd_loss(student, teacher, 4.0))


def test_gradients_reach_the_student_never_the_teacher():
    student, teacher, labels = _pinned_inputs()
    for method in ("kd", "dkd"):
        s, t = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
        d = build(distill_config(method, kd__standardize=True, dkd__standardize=True, dkd__warmup=0), student_dim=4,
                  teacher_dims=[4], train_labels=torch.arange(10))
        d(_out(s), _out(t), labels, torch.arange(8))[method].backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 and t.grad is None
        # z-scoring removes each row's mean and scale: the gradient is orthogonal to both directions
        torch.testing.assert_close(s.grad.sum(1), torch.zeros(8), atol=1e-5, rtol=0)
        torch.testing.assert_close((s.grad * s.detach()).sum(1), torch.zeros(8), atol=1e-4, rtol=0)


def test_presets_carry_the_papers_settings():
    assert paper_defaults("kd_ls") == {"distill.ce.weight": 0.1, "distill.kd.weight": 9.0, "distill.kd.temperature": 2.0,
                                       "distill.kd.standardize": True}
    dkd = paper_defaults("dkd_ls")
    assert (dkd["distill.dkd.weight"], dkd["distill.dkd.temperature"]) == (9.0, 2.0)
    assert dkd["distill.dkd.standardize"] is True
    assert (dkd["distill.dkd.alpha"], dkd["distill.dkd.beta"], dkd["distill.ce.weight"]) == (1.0, 8.0, 1.0)
    d = build(distill_config("kd_ls", **{k.removeprefix("distill.").replace(".", "__"): v
                                         for k, v in paper_defaults("kd_ls").items()}),
              student_dim=4, teacher_dims=[4], train_labels=torch.arange(10))
    assert list(d.terms) == ["ce", "kd"] and d.terms["kd"].standardize is True and d.weights == {"ce": 0.1, "kd": 9.0}


def test_a_non_boolean_standardize_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="distill.kd.standardize"):
        load_config(None, ["distill.kd.standardize=maybe"])


def test_standardised_kd_learns_digits(digits):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": "kd", "distill.kd.standardize": True,
                                            "distill.kd.temperature": 2.0}), data, [teacher])
    for _ in range(cfg.train.epochs):
        trainer.train_one_epoch()
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1


def test_the_logit_std_space_starts_at_the_papers_points_with_standardisation_on():
    cfg = load_config(None, [])
    space = load_space("logit_std", cfg, num_train_samples=54_000)
    assert space.fixed == {"distill.kd.standardize": True, "distill.dkd.standardize": True}
    points = paper_points(space, cfg)
    assert [p.method for p in points] == ["kd_ls", "dkd_ls"] and all(p.deviations == {} for p in points)
    assert points[0].params["distill.kd.weight"] == 9.0 and points[1].params["distill.dkd.weight"] == 9.0
