"""VID (variational information distillation): pinned to RepDistiller, closed forms, gradients.

Reference: ``VIDLoss(Cs, Ct, Ct, init_pred_var)`` of HobbitLong/RepDistiller ``distiller_zoo/VID.py`` at
commit b84f547c5db6a35318d4671d7d5c4de74c822403, holding the weights our ``VIDRegressor`` draws after
``torch.manual_seed(case)`` (its log-scales equal the reference's own initialisation), evaluated in
float64 on ``maps(case, student_shape, teacher_shape)`` of ``tests/baseline_inputs.py``; the term's value
is the sum over the stage pairs (s2, t3), (s3, t4) of ``outputs()`` with the regressors built after
``torch.manual_seed(0)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from baseline_inputs import B, build_term, check_gradients, maps, outputs
from orchestrator.distill.vid import VIDRegressor

CASES = [((8, 8, 8), (12, 8, 8), 5.0), ((8, 8, 8), (24, 4, 4), 5.0), ((4, 8, 8), (6, 16, 16), 2.0)]
REFERENCE = [0.9025370648226482, 0.9107722365106379, 0.5309470336711094]
TERM_REFERENCE = 1.8185679682113243


@pytest.mark.parametrize("case", range(len(CASES)))
def test_vid_matches_repdistiller(case):
    s, t, init_var = CASES[case]
    torch.manual_seed(case)
    regressor = VIDRegressor(s[0], t[0], init_var)
    f_s, f_t = maps(case, s, t)
    assert regressor(f_s, f_t).item() == pytest.approx(REFERENCE[case], rel=1e-6)


def test_the_term_has_one_regressor_per_stage_pair():
    objective = build_term("ce+vid")
    term = objective.terms["vid"]
    assert term.pairs == [[(1, 2), (2, 3)]] and len(term.regressors[0]) == 2 and objective.weights["vid"] == 1.0
    student, teachers = outputs()
    value = objective(student, teachers, torch.arange(B) % 10, torch.arange(B))["vid"]
    assert value.item() == pytest.approx(TERM_REFERENCE, rel=1e-6)


def test_closed_form_of_a_zero_mean_prediction():
    regressor = VIDRegressor(4, 6, init_pred_var=2.0)
    torch.testing.assert_close(regressor.variance(), torch.full((6,), 2.0))
    for p in regressor.mean.parameters():
        torch.nn.init.zeros_(p)
    f_s, f_t = maps(9, (4, 8, 8), (6, 8, 8))
    expected = 0.5 * (f_t.pow(2).mean().item() / 2.0 + math.log(2.0))
    assert regressor(f_s, f_t).item() == pytest.approx(expected, rel=1e-6)
    assert VIDRegressor(2, 2, init_pred_var=100.0).variance()[0].item() == pytest.approx(100.0)  # no overflow


def test_gradients_reach_the_student_regressors_and_variances_never_the_teacher():
    check_gradients("ce+vid", "vid")
