"""FT (Kim et al. 2018): pinned to RepDistiller, closed forms, paraphraser/translator, gradients, pre-stage.

The pinned values are RepDistiller's ``distiller_zoo/FT.py`` (github.com/HobbitLong/RepDistiller at commit
b84f547c5db6a35318d4671d7d5c4de74c822403), ``FactorTransfer()(f_s, f_t)`` on the inputs of
:func:`_pinned_inputs`; the paraphraser's and translator's parameter counts are those of its
``models/util.py`` ``Paraphraser((2, 12, 4, 4))`` and ``Translator((2, 8, 4, 4), (2, 12, 4, 4))``. The digits
run and the Learner's pre-stage are in tests/test_distill_feature_terms.py.
"""

from __future__ import annotations

import pytest
import torch

from feature_term_helpers import assert_student_gets_gradients_teacher_none, term_and_batch
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.distill import paper_defaults
from orchestrator.distill.ft import Paraphraser, ft_loss, translator

# (student factor, teacher factor) -> RepDistiller's value: a 4x4 vs a 2x2 map (pooled), 4x4 vs 4x4
REFERENCE = {("a", "b"): 0.2731322646141052, ("a", "c"): 0.14048345386981964, ("b", "a"): 0.2731322646141052}


def _pinned_inputs():
    g = torch.Generator().manual_seed(16)
    return {"a": torch.randn(4, 5, 4, 4, generator=g), "b": torch.randn(4, 5, 2, 2, generator=g),
            "c": torch.randn(4, 5, 4, 4, generator=g)}


@pytest.mark.parametrize("pair", sorted(REFERENCE))
def test_ft_matches_repdistiller(pair):
    x = _pinned_inputs()
    assert ft_loss(x[pair[0]], x[pair[1]]).item() == pytest.approx(REFERENCE[pair], rel=1e-5)


def test_closed_forms():
    x = _pinned_inputs()["a"]
    assert ft_loss(x, x.clone()).item() == 0.0
    assert ft_loss(torch.full((2, 3, 4, 4), 2.0), torch.full((2, 5, 4, 4), 7.0)).item() == pytest.approx(0.0, abs=1e-7)


def test_paraphraser_and_translator_sizes_match_repdistiller():
    assert sum(p.numel() for p in Paraphraser(12, 6).parameters()) == 4590
    assert sum(p.numel() for p in translator(8, 6).parameters()) == 1392
    assert Paraphraser(12, 6)(torch.randn(2, 12, 4, 4)).shape == (2, 12, 4, 4)


def test_pre_stage_trains_the_paraphraser_only_then_it_is_frozen():
    term, batch = term_and_batch("ft")
    value = assert_student_gets_gradients_teacher_none(term, batch, pre_stage=True)
    assert value > 0 and all(p.grad is not None for p in term.paraphrasers.parameters())
    assert all(p.grad is None for p in term.translators.parameters())
    assert all(f.grad is None for f in batch.student.features)
    term.zero_grad(set_to_none=True)
    assert_student_gets_gradients_teacher_none(term, batch)
    assert all(p.grad is None for p in term.paraphrasers.parameters())  # frozen during distillation
    assert all(p.grad is not None for p in term.translators.parameters())
    assert batch.student.features[-1].grad.abs().sum() > 0


def test_several_teachers_have_their_own_parts():
    term, batch = term_and_batch("ft", teachers=2, teacher_weights=[1, 3])
    assert len(term.paraphrasers) == len(term.translators) == 2
    with torch.no_grad():
        both = term(batch)
        term.teacher_weights = (1.0, 0.0)
        first = term(batch)
        term.teacher_weights = (0.0, 1.0)
        second = term(batch)
    torch.testing.assert_close(both, 0.25 * first + 0.75 * second)


def test_knobs_and_paper_defaults():
    assert paper_defaults("ce+ft") == {"distill.ft.weight": 200.0, "distill.ft.init_epochs": 30, "distill.ft.rate": 0.5}
    for bad in ("distill.ft.stage=-2,-1", "distill.ft.rate=0", "distill.ft.init_epochs=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    with pytest.raises(ValueError, match="distill.ft.rate=0.01 leaves no factor channel"):
        term_and_batch("ft", ft__rate=0.01)
