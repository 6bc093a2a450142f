"""SP (similarity-preserving): pinned to RepDistiller, closed forms, gradients.

Reference: ``Similarity().similarity_loss`` of HobbitLong/RepDistiller ``distiller_zoo/SP.py`` at commit
b84f547c5db6a35318d4671d7d5c4de74c822403, evaluated in float64 on ``maps(case, student_shape,
teacher_shape)`` of ``tests/baseline_inputs.py``; the term's value is ``3000 * similarity_loss(s3, t4)``
on ``outputs()`` (the last stage of each model, RepDistiller's ``feat[-2]``).
"""

from __future__ import annotations

import math

import pytest
import torch

from baseline_inputs import B, build_term, check_gradients, maps, outputs
from orchestrator.distill.sp import sp_loss

CASES = [((16, 4, 4), (24, 2, 2)), ((8, 8, 8), (12, 8, 8)), ((4, 8, 8), (6, 16, 16))]
REFERENCE = [0.0006253551543000949, 0.00024873614396425095, 0.00036677902503726726]
TERM_REFERENCE = 5.2011129675866785  # weight 3000 included


@pytest.mark.parametrize("case", range(len(CASES)))
def test_sp_matches_repdistiller(case):
    f_s, f_t = maps(case, *CASES[case])
    assert sp_loss(f_s, f_t).item() == pytest.approx(REFERENCE[case], rel=2e-6)  # float32 Gram matrices


def test_the_term_reads_the_last_stages_at_the_paper_weight():
    objective = build_term("ce+sp")
    assert objective.terms["sp"].pairs == [[(2, 3)]] and objective.weights["sp"] == 3000.0
    student, teachers = outputs()
    value = objective(student, teachers, torch.arange(B) % 10, torch.arange(B))["sp"]
    assert value.item() == pytest.approx(TERM_REFERENCE, rel=2e-6)


def test_closed_forms():
    (f,) = maps(3, (5, 4, 4))
    assert sp_loss(f, f.clone()).item() == 0.0
    assert sp_loss(f, 2.0 * torch.cat([f, torch.zeros_like(f)], 1)).item() == pytest.approx(0.0, abs=1e-12)
    # two samples: orthogonal (similarity I) against parallel (rows of 1/sqrt 2): (4 - 2 sqrt 2) / 4
    value = sp_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert value.item() == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-6)


def test_gradients_reach_the_student_never_the_teacher():
    check_gradients("ce+sp", "sp")
