"""RKD (relational KD, distance + angle): pinned to RepDistiller, closed forms, gradients.

Reference: ``RKDLoss(w_d, w_a)`` of HobbitLong/RepDistiller ``distiller_zoo/RKD.py`` at commit
b84f547c5db6a35318d4671d7d5c4de74c822403, evaluated in float64 on ``vectors(case, 12, 16)`` of
``tests/baseline_inputs.py``; the term's value is ``RKDLoss()(e_s, e_t)`` on the embeddings of ``outputs()``.
"""

from __future__ import annotations

import pytest
import torch

from baseline_inputs import B, build_term, check_gradients, outputs, vectors
from orchestrator.distill.rkd import rkd_loss

# (distance weight, angle weight) -> RepDistiller's RKDLoss on vectors(case, 12, 16)
REFERENCE = {(25.0, 50.0): 1.5271856861134805, (1.0, 0.0): 0.03510146638594252, (0.0, 1.0): 0.03399276546408454}
TERM_REFERENCE = 2.008275729707633


@pytest.mark.parametrize("case, weights", list(enumerate(REFERENCE)))
def test_rkd_matches_repdistiller(case, weights):
    e_s, e_t = vectors(case, 12, 16)
    assert rkd_loss(e_s, e_t, *weights).item() == pytest.approx(REFERENCE[weights], rel=1e-6)


def test_the_term_reads_the_embeddings_with_the_paper_weights():
    objective = build_term("ce+rkd")
    term = objective.terms["rkd"]
    assert (term.distance_weight, term.angle_weight, objective.weights["rkd"]) == (25.0, 50.0, 1.0)
    student, teachers = outputs()
    value = objective(student, teachers, torch.arange(B) % 10, torch.arange(B))["rkd"]
    assert value.item() == pytest.approx(TERM_REFERENCE, rel=1e-6)


def test_scaled_rotated_shifted_or_padded_teachers_give_zero():
    (t,) = vectors(5, 6)
    t = t.double()
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    for student in (2.5 * t @ rotation + 3.0, torch.cat([t, torch.zeros(len(t), 4, dtype=t.dtype)], 1)):
        assert rkd_loss(student, t).item() == pytest.approx(0.0, abs=1e-10)


def test_a_batch_of_one_has_no_relation():
    value = rkd_loss(torch.ones(1, 3, requires_grad=True), torch.ones(1, 4))
    assert value.item() == 0.0 and value.requires_grad


def test_gradients_reach_the_student_never_the_teacher():
    check_gradients("ce+rkd", "rkd")
