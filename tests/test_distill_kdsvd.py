"""KDSVD (Lee, Kim & Song 2018): pinned to RepDistiller, closed forms, small maps, gradients, connectors.

The pinned value is RepDistiller's ``distiller_zoo/KDSVD.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``sum(KDSVD()(g_s, g_t))`` on the inputs of :func:`_pinned_inputs`
(CPU; singular-vector signs follow LAPACK there). The digits run is in tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.kdsvd import kdsvd_loss

REFERENCE = 0.1560416966676712 + 0.14494039118289948  # the two consecutive-stage terms, float32


def _pinned_inputs():
    g = torch.Generator().manual_seed(13)
    s = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g),
         torch.randn(4, 8, 2, 2, generator=g)]
    t = [torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 8, 4, 4, generator=g),
         torch.randn(4, 8, 2, 2, generator=g)]
    return s, t


def test_kdsvd_matches_repdistiller():
    s, t = _pinned_inputs()
    assert kdsvd_loss(s, t).item() == pytest.approx(REFERENCE, rel=1e-5)


def test_equal_maps_give_zero_whatever_the_sign():
    _, t = _pinned_inputs()
    assert kdsvd_loss([f.clone() for f in t], t).item() == pytest.approx(0.0, abs=1e-6)
    assert kdsvd_loss([-f for f in t], t).item() == pytest.approx(0.0, abs=1e-6)  # aligned singular vectors


def test_small_and_degenerate_maps_stay_finite():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 6, 4, 4), (4, 8, 2, 2), (4, 8, 1, 1)]  # 1x1: one singular vector, fewer than k + 3
    s = [torch.randn(*x, generator=g).requires_grad_() for x in shapes]
    t = [torch.randn(*x, generator=g) for x in shapes]
    kdsvd_loss(s, t).backward()
    assert all(torch.isfinite(f.grad).all() for f in s)
    dead = [torch.randn(4, 6, 4, 4, generator=g), torch.zeros(4, 8, 4, 4)]  # repeated (zero) singular values
    dead = [f.requires_grad_() for f in dead]
    value = kdsvd_loss(dead, [torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 8, 4, 4, generator=g)])
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(f.grad).all() for f in dead)


def test_gradients_reach_the_student_and_connectors_never_the_teacher():
    term, batch = term_and_batch("kdsvd", kdsvd__stages="0:")  # every stage (the default skips the first)
    assert_student_gets_gradients_teacher_none(term, batch)
    convs = [c for c in term.connectors[0] if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)


def test_unequal_channels_are_refused_without_connectors_and_k_is_checked():
    with pytest.raises(ValueError, match="distill.kdsvd.connectors=auto"):
        term_and_batch("kdsvd", kdsvd__connectors="none")
    with pytest.raises(ValueError, match="distill.kdsvd.k=5"):
        term_and_batch("kdsvd", kdsvd__k=5)  # the 2x2 stage has 4 singular vectors
    for bad in ("distill.kdsvd.stages=-1", "distill.kdsvd.k=0", "distill.kdsvd.connectors=always"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


def test_several_teachers_have_their_own_connectors_and_are_weighted():
    term, batch = term_and_batch("kdsvd", teachers=2, teacher_weights=[1, 1])
    assert len(term.connectors) == 2
    with torch.no_grad():
        both = term(batch)
        term.teacher_weights = (1.0, 0.0)
        first = term(batch)
        term.teacher_weights = (0.0, 1.0)
        second = term(batch)
    torch.testing.assert_close(both, 0.5 * first + 0.5 * second)


def test_paper_defaults():
    assert paper_defaults("ce+kdsvd") == {"distill.kdsvd.weight": 1.0, "distill.kdsvd.k": 1}
