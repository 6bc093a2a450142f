"""CC (correlation congruence): pinned to RepDistiller, closed forms, gradients (heads train, the teacher not).

Reference: ``Correlation()`` of HobbitLong/RepDistiller ``distiller_zoo/CC.py`` (and its ``LinearEmbed``
heads, ``models/util.py``) at commit b84f547c5db6a35318d4671d7d5c4de74c822403, evaluated in float64 on
``vectors(case, 32, 32)`` of ``tests/baseline_inputs.py``; the term's value is
``0.02 * Correlation()(embed_s(e_s), embed_t(e_t))`` on ``outputs()``'s embeddings with RepDistiller's
heads holding the weights our heads draw after ``torch.manual_seed(0)``.
"""

from __future__ import annotations

import pytest
import torch

from baseline_inputs import B, build_term, check_gradients, outputs, vectors
from orchestrator.distill.cc import cc_loss

REFERENCE = [46.412698194493636, 41.9907781231952]
TERM_REFERENCE = 1.203724474186473  # weight 0.02 included


@pytest.mark.parametrize("case", range(len(REFERENCE)))
def test_cc_matches_repdistiller(case):
    z_s, z_t = vectors(case, 32, 32)
    assert cc_loss(z_s, z_t).item() == pytest.approx(REFERENCE[case], rel=1e-6)


def test_the_term_embeds_both_sides_at_the_paper_weight():
    objective = build_term("ce+cc")
    term = objective.terms["cc"]
    assert term.heads_s[0].out_features == term.heads_t[0].out_features == 128 and objective.weights["cc"] == 0.02
    student, teachers = outputs()
    value = objective(student, teachers, torch.arange(B) % 10, torch.arange(B))["cc"]
    assert value.item() == pytest.approx(TERM_REFERENCE, rel=1e-6)


def test_closed_forms():
    (z,) = vectors(4, 6)
    assert cc_loss(z, z.clone()).item() == 0.0
    # |z_s - z_t| = [[1, 2], [3, 4]]: one consecutive pair, <(1, 2), (3, 4)> = 11
    assert cc_loss(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [0.0, 8.0]])).item() == 11.0
    assert cc_loss(torch.ones(1, 3), torch.zeros(1, 3)).item() == 0.0  # one sample: no pair


def test_gradients_reach_the_student_and_both_heads_never_the_teacher():
    check_gradients("ce+cc", "cc")
