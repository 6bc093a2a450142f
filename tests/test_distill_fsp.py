"""FSP (Yim et al. 2017): pinned to RepDistiller, closed forms, gradients, connectors, pre-stage.

The pinned value is RepDistiller's ``distiller_zoo/FSP.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``sum(FSP(s_shapes, t_shapes)(g_s, g_t))`` on the inputs of
:func:`_pinned_inputs`, in float64. The digits run and the Learner's pre-stage are in
tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import load_config
from orchestrator.distill import paper_defaults, registry
from orchestrator.distill.fsp import fsp_loss

REFERENCE_F64 = 0.20473084559483135


def _pinned_inputs():
    g = torch.Generator().manual_seed(14)
    s = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g),
         torch.randn(4, 8, 4, 4, generator=g)]
    t = [torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 8, 4, 4, generator=g),
         torch.randn(4, 8, 2, 2, generator=g)]
    return s, t


def test_fsp_matches_repdistiller():
    s, t = _pinned_inputs()
    assert fsp_loss([f.double() for f in s], [f.double() for f in t]).item() == pytest.approx(REFERENCE_F64, rel=1e-9)
    assert fsp_loss(s, t).item() == pytest.approx(REFERENCE_F64, rel=1e-5)


def test_closed_forms():
    s, _ = _pinned_inputs()
    assert fsp_loss(s, [f.clone() for f in s]).item() == 0.0
    one = lambda v: torch.tensor([[[[v]]]])  # noqa: E731  (1, 1, 1, 1): the FSP matrix is bottom * top
    assert fsp_loss([one(2.0), one(3.0)], [one(1.0), one(4.0)]).item() == pytest.approx((6.0 - 4.0) ** 2)


def test_gradients_reach_the_student_and_connectors_never_the_teacher():
    term, batch = term_and_batch("fsp", fsp__weight=50.0)
    assert_student_gets_gradients_teacher_none(term, batch, pre_stage=True)
    assert all(f.grad.abs().sum() > 0 for f in batch.student.features)
    assert all(c.weight.grad is not None for c in term.connectors[0])


def test_unequal_channels_are_refused_without_connectors():
    with pytest.raises(ValueError, match="FSP .* needs equal channel counts .* distill.fsp.connectors=auto"):
        term_and_batch("fsp", fsp__connectors="none")


def test_paper_defaults_keep_30_init_epochs_and_main_weight_0():
    assert paper_defaults("ce+fsp") == {"distill.fsp.weight": 0.0, "distill.fsp.init_epochs": 30}
    cfg = load_config(None, ["distill.method=ce+fsp"])
    assert cfg.distill.fsp.init_epochs == 1 and registry.term("fsp").pre_stage == "init_epochs"
