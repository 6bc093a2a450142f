"""NST (Huang & Wang 2017): pinned to RepDistiller, closed forms, gradients, stage selection, ensembles.

The pinned values are RepDistiller's ``distiller_zoo/NST.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``NSTLoss()(g_s, g_t)`` per stage on the inputs of
:func:`_pinned_inputs` (the second pair pools the student's 4x4 map to the teacher's 2x2).
The digits run is in tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.nst import nst_loss

REFERENCE = [0.25851544737815857, 0.20037731528282166]  # float32, per stage


def _pinned_inputs():
    g = torch.Generator().manual_seed(12)
    s = [torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 8, 4, 4, generator=g)]
    t = [torch.randn(4, 10, 8, 8, generator=g), torch.randn(4, 12, 2, 2, generator=g)]
    return s, t


def test_nst_matches_repdistiller():
    s, t = _pinned_inputs()
    for f_s, f_t, ref in zip(s, t, REFERENCE):
        assert nst_loss(f_s, f_t).item() == pytest.approx(ref, rel=1e-5)


def test_equal_maps_give_zero_and_one_channel_closed_form():
    s, _ = _pinned_inputs()
    assert nst_loss(s[0], s[0].clone()).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[[[1.0, 0.0]]]])  # one sample, one channel, 1x2 map
    b = torch.tensor([[[[1.0, 1.0]]]])
    cos = 1 / math.sqrt(2)
    assert nst_loss(a, b).item() == pytest.approx(2 - 2 * cos**2, rel=1e-6)  # k(s,s) + k(t,t) - 2 k(s,t)


def test_gradients_reach_the_student_never_the_teacher():
    term, batch = term_and_batch("nst", nst__stages="0:")  # every stage (the default skips the first)
    assert_student_gets_gradients_teacher_none(term, batch)
    assert all(f.grad.abs().sum() > 0 for f in batch.student.features)


def test_stage_selectors_choose_stages_by_name_or_from_the_end():
    term, _ = term_and_batch("nst", nst__stages="stage2,last")
    assert (term.s_pos, term.t_pos) == ([1, 2], [[1, 2]])
    with pytest.raises(ValueError, match=r"distill.nst.stages=-4,-1: the student has no stage at position -4 .* "
                                         r"its 3 stages: \['stage1', 'stage2', 'stage3'\]"):
        term_and_batch("nst", nst__stages="-4,-1")
    term, _ = term_and_batch("nst", nst__stages="1:")  # slices, as every stage knob takes them
    assert (term.s_pos, term.t_pos) == ([1, 2], [[1, 2]])
    for bad in ("", "-1,-1", " , "):
        with pytest.raises(ConfigError, match="distill.nst.stages"):
            load_config(None, [f"distill.nst.stages={bad}"])


def test_several_teachers_are_weighted():
    term, batch = term_and_batch("nst", teachers=2, teacher_weights=[3, 1])
    s = batch.student.features
    expected = sum(w * sum(nst_loss(s[i], t.features[i]) for i in (1, 2))  # the default "1:" skips the first
                   for w, t in zip((0.75, 0.25), batch.teachers))
    torch.testing.assert_close(term(batch), expected)


def test_paper_defaults():
    assert paper_defaults("ce+nst") == {"distill.nst.weight": 50.0}
    assert load_config(None, []).distill.nst.stages == "1:"  # RepDistiller's feat[1:-1]
