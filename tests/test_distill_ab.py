"""AB (Heo et al. 2019): pinned to RepDistiller, closed forms, connectors, gradients, pre-stage.

The pinned values are RepDistiller's ``distiller_zoo/AB.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``sum(ABLoss(2, margin)(g_s, g_t))`` on the inputs of
:func:`_pinned_inputs` (the connector outputs and the teacher maps); the connectors' parameter counts are
those of its ``models/util.py`` ``ConvReg(s, t, use_relu=False)``. The digits run and the Learner's pre-stage
are in tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.ab import Connector, ab_loss

REFERENCE = {1.0: 0.2733888626098633 + 0.23756875097751617, 0.5: 0.14764001965522766 + 0.13713547587394714}


def _pinned_inputs():
    g = torch.Generator().manual_seed(15)
    s = [torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 8, 2, 2, generator=g)]
    t = [torch.randn(4, 6, 4, 4, generator=g), torch.randn(4, 8, 2, 2, generator=g)]
    return s, t


@pytest.mark.parametrize("margin", sorted(REFERENCE))
def test_ab_matches_repdistiller(margin):
    s, t = _pinned_inputs()
    assert ab_loss(s, t, margin).item() == pytest.approx(REFERENCE[margin], rel=1e-5)


def test_closed_form_of_single_neurons():
    one = lambda v: torch.tensor([[[[v]]]])  # noqa: E731
    # teacher off (t <= 0): (s + m)^2 while s > -m; teacher on: (s - m)^2 while s <= m; x 3/1000 / B
    assert ab_loss([one(0.5)], [one(-1.0)]).item() == pytest.approx(2.25 * 3e-3)
    assert ab_loss([one(-2.0)], [one(-1.0)]).item() == 0.0
    assert ab_loss([one(0.5)], [one(1.0)]).item() == pytest.approx(0.25 * 3e-3)
    assert ab_loss([one(0.5), one(0.5)], [one(1.0), one(1.0)]).item() == pytest.approx(1.5 * 0.25 * 3e-3)


@pytest.mark.parametrize("shapes, params", [
    (((6, 8, 8), (10, 4, 4)), 570), (((6, 4, 4), (10, 8, 8)), 990), (((6, 7, 7), (10, 4, 4)), 990),
    (((6, 4, 4), (10, 4, 4)), 90),
])
def test_connectors_match_repdistillers_convreg(shapes, params):
    connector = Connector(*shapes)
    assert sum(p.numel() for p in connector.parameters()) == params
    assert connector(torch.randn(2, *shapes[0])).shape[1:] == shapes[1]


def test_gradients_reach_the_student_and_connectors_never_the_teacher():
    term, batch = term_and_batch("ab", ab__weight=1.0, ab__stages="0:")  # every stage (the default skips the first)
    assert_student_gets_gradients_teacher_none(term, batch, pre_stage=True)
    assert all(f.grad.abs().sum() > 0 for f in batch.student.features)
    assert all(c[0].weight.grad.abs().sum() > 0 for c in term.connectors[0])


def test_knobs_and_paper_defaults():
    assert paper_defaults("ce+ab") == {"distill.ab.weight": 0.0, "distill.ab.init_epochs": 30,
                                       "distill.ab.margin": 1.0}
    for bad in ("distill.ab.margin=0", "distill.ab.init_epochs=-1", "distill.ab.stages=,"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    with pytest.raises(ValueError, match="no connector from a student map"):
        Connector((4, 2, 2), (4, 8, 8))
