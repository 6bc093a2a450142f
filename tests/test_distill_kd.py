"""CE and KD terms against hand-computed values; objectives built from presets and term lists."""

from __future__ import annotations

import math

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.distill import method_names
from orchestrator.distill.kd import KD, kd_loss
from orchestrator.models.base import ModelOutput

S = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
T_ = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
TEMP = 2.0


def _softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(x / temp) for x in row]
    return [x / sum(e) for x in e]


def _kd_by_hand(s: list[list[float]], t: list[list[float]], temp: float) -> float:
    total = 0.0
    for s_row, t_row in zip(s, t):
        p_s, p_t = _softmax(s_row, temp), _softmax(t_row, temp)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return temp**2 * total / len(s)  # batchmean


def _out(logits, emb_dim: int = 4) -> ModelOutput:
    logits = torch.as_tensor(logits)
    return ModelOutput([], torch.zeros(logits.shape[0], emb_dim), logits)


def test_kd_equals_closed_form():
    value = kd_loss(torch.tensor(S), torch.tensor(T_), TEMP)
    assert value.item() == pytest.approx(_kd_by_hand(S, T_, TEMP), rel=1e-6)
    assert kd_loss(torch.tensor(S), torch.tensor(S), TEMP).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_is_analytic():
    s = torch.tensor(S, requires_grad=True)
    t = torch.tensor(T_, requires_grad=True)
    (grad,) = torch.autograd.grad(kd_loss(s, t, TEMP), s)
    batch = len(S)
    expected = [
        [TEMP * (ps - pt) / batch for ps, pt in zip(_softmax(s_row, TEMP), _softmax(t_row, TEMP))]
        for s_row, t_row in zip(S, T_)
    ]
    torch.testing.assert_close(grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_kd_objective_weights_terms_and_detaches_teacher():
    labels = torch.tensor([2, 0])
    t_logits = torch.tensor(T_, requires_grad=True)
    cfg = distill_config("kd", ce__weight=0.5, kd__weight=3.0, kd__temperature=TEMP)
    d = build(cfg, student_dim=4, teacher_dims=[4], train_labels=labels, num_classes=3)
    s_logits = torch.tensor(S, requires_grad=True)
    terms = d(_out(s_logits), _out(t_logits), labels, torch.arange(2))
    assert list(terms) == ["ce", "kd"]
    ce_by_hand = -sum(math.log(_softmax(row, 1.0)[y]) for row, y in zip(S, [2, 0])) / 2
    assert terms["ce"].item() == pytest.approx(0.5 * ce_by_hand, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(3.0 * _kd_by_hand(S, T_, TEMP), rel=1e-6)
    sum(terms.values()).backward()
    assert s_logits.grad is not None and t_logits.grad is None
    # a single-teacher list is accepted as well
    assert d(_out(S), [_out(T_)], labels, torch.arange(2))["kd"].item() == pytest.approx(terms["kd"].item())


def test_ce_objective_needs_no_teacher():
    d = build(distill_config("ce", ce__weight=2.0), student_dim=4, teacher_dims=[], train_labels=torch.tensor([2, 0]))
    assert d.needs_teacher is False
    terms = d(_out(S), [], torch.tensor([2, 0]), torch.arange(2))
    assert set(terms) == {"ce"}


def test_presets_and_term_lists_build_their_terms_and_errors():
    labels = torch.arange(20) % 4
    kw = dict(num_classes=4, student_dim=8, teacher_dims=[6], train_labels=labels, seed=0)
    expected = {"ce": ["ce"], "kd": ["ce", "kd"], "crd": ["ce", "crd"], "crd_kd": ["ce", "kd", "crd"],
                "ce+kd+crd": ["ce", "kd", "crd"], "kd+crd": ["kd", "crd"]}
    for method, names in expected.items():
        d = build(distill_config(method, crd__nce_k=5), **kw)
        assert list(d.terms) == names
        assert d.needs_teacher == (method != "ce")
    kd = build(distill_config("kd", ce__weight=0.3, kd__weight=0.7), **kw)
    assert (kd.weights, kd.terms["kd"].temperature) == ({"ce": 0.3, "kd": 0.7}, 4.0)
    with pytest.raises(ValueError, match="'nope'.*allowed: a preset") as err:
        build(distill_config("ce").__class__(method="nope"), **kw)
    assert all(f" {name}," in str(err.value) or f" {name})" in str(err.value) for name in method_names())
    with pytest.raises(ValueError, match="teacher"):
        build(distill_config("kd"), **{**kw, "teacher_dims": []})
    with pytest.raises(ValueError, match="temperature"):
        KD(temperature=0.0)
    with pytest.raises(ValueError, match="distill.kd.weight"):
        distill_config("kd", kd__weight=-1.0)
