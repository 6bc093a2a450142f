"""PKT (Passalis & Tefas 2018): pinned to RepDistiller, closed forms, gradients, ensembles.

The pinned value is RepDistiller's ``distiller_zoo/PKT.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``PKT()(s, t)`` on the inputs of :func:`_pinned_inputs`, in
float32 and float64. The digits run is in tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.pkt import pkt_loss

REFERENCE_F32, REFERENCE_F64 = 0.005421142093837261, 0.005421145431901206


def _pinned_inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randn(8, 12, generator=g), torch.randn(8, 16, generator=g)


def test_pkt_matches_repdistiller():
    s, t = _pinned_inputs()
    assert pkt_loss(s.double(), t.double()).item() == pytest.approx(REFERENCE_F64, rel=1e-9)
    assert pkt_loss(s, t).item() == pytest.approx(REFERENCE_F32, rel=1e-5)


def test_equal_similarities_give_zero_and_scale_does_not_matter():
    s, _ = _pinned_inputs()
    assert pkt_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert pkt_loss(s, 3.0 * s).item() == pytest.approx(0.0, abs=1e-6)


def test_two_samples_closed_form():
    s = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cosine 0.6
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # cosine 0
    def rows(c):  # each row: (1, (c + 1) / 2) normalised
        off = (c + 1) / 2
        return [1 / (1 + off), off / (1 + off)]
    p_s, p_t = rows(0.6), rows(0.0)
    expected = sum(b * math.log(b / a) for a, b in zip(p_s, p_t)) / 2  # 2 identical rows of 2, mean over 4
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_the_student_embedding_never_the_teacher():
    term, batch = term_and_batch("pkt")
    assert_student_gets_gradients_teacher_none(term, batch)
    assert batch.student.embedding.grad.abs().sum() > 0


def test_several_teachers_are_weighted():
    term, batch = term_and_batch("pkt", teachers=2, teacher_weights=[1, 3])
    value = term(batch)
    expected = 0.25 * pkt_loss(batch.student.embedding, batch.teachers[0].embedding) + \
        0.75 * pkt_loss(batch.student.embedding, batch.teachers[1].embedding)
    torch.testing.assert_close(value, expected)


def test_paper_defaults_and_knob_checks():
    assert paper_defaults("ce+pkt") == {"distill.pkt.weight": 30000.0}
    assert load_config(None, []).distill.pkt.weight == 30000.0
    with pytest.raises(ConfigError, match="distill.pkt.weight"):
        load_config(None, ["distill.pkt.weight=-1"])
