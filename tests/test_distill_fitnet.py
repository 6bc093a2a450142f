"""FitNet (hints): pinned to RepDistiller, connector shapes, refusals, gradients, the hint pre-stage.

Reference: ``HintLoss()(ConvReg(s_shape, t_shape)(f_s), f_t)`` of HobbitLong/RepDistiller
(``distiller_zoo/FitNet.py``, ``models/util.py``) at commit b84f547c5db6a35318d4671d7d5c4de74c822403, the
``ConvReg`` holding the weights our ``hint_connector`` draws after ``torch.manual_seed(case)``, evaluated in
float64 (BatchNorm in training mode) on ``maps(case, student_shape, teacher_shape)`` of
``tests/baseline_inputs.py``; the term's value is ``100 *`` that for the stage pair (s2, t3) of ``outputs()``
(``distill.fitnet.stage=-2``) with the connector built after ``torch.manual_seed(0)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baseline_inputs import B, TEACHER, build_term, check_gradients, maps, outputs
from orchestrator.config.schema import apply_overrides
from orchestrator.distill.base import Batch
from orchestrator.distill.fitnet import hint_connector
from orchestrator.run.learner import Learner
from orchestrator.models.base import Shapes

# (student shape, teacher shape) -> (connector convolution, kernel), RepDistiller's value
CASES = [((8, 8, 8), (24, 4, 4)), ((4, 8, 8), (6, 16, 16)), ((8, 7, 7), (12, 4, 4)), ((8, 8, 8), (12, 8, 8))]
CONVS = [(nn.Conv2d, (3, 3)), (nn.ConvTranspose2d, (4, 4)), (nn.Conv2d, (4, 4)), (nn.Conv2d, (1, 1))]
REFERENCE = [0.8636474299748528, 0.8828877690552931, 0.824010543515083, 0.8651080484833956]
TERM_REFERENCE = 88.88674616639773  # weight 100 included


@pytest.mark.parametrize("case", range(len(CASES)))
def test_fitnet_matches_repdistiller(case):
    s, t = CASES[case]
    torch.manual_seed(case)
    connector = hint_connector(s, t)
    kind, kernel = CONVS[case]
    assert type(connector[0]) is kind and connector[0].kernel_size == kernel
    f_s, f_t = maps(case, s, t)
    assert F.mse_loss(connector(f_s), f_t).item() == pytest.approx(REFERENCE[case], rel=1e-6)


def test_the_default_hint_is_the_stage_named_stage2():
    assert build_term("ce+fitnet").terms["fitnet"].pairs == [(1, 1)]  # RepDistiller's feat[2] on the zoo


def test_the_term_hints_stage_minus_two_at_the_paper_weight():
    objective = build_term("ce+fitnet", fitnet__stage="-2")
    assert objective.terms["fitnet"].pairs == [(1, 2)] and objective.weights["fitnet"] == 100.0
    student, teachers = outputs()
    value = objective(student, teachers, torch.arange(B) % 10, torch.arange(B))["fitnet"]
    assert value.item() == pytest.approx(TERM_REFERENCE, rel=1e-6)


def test_closed_form_of_a_zero_connector():
    connector = hint_connector((4, 8, 8), (6, 8, 8))
    nn.init.zeros_(connector[0].weight)
    nn.init.zeros_(connector[0].bias)
    f_s, f_t = maps(2, (4, 8, 8), (6, 8, 8))
    assert F.mse_loss(connector(f_s), f_t).item() == pytest.approx(f_t.pow(2).mean().item(), rel=1e-6)


def test_unbridgeable_or_several_stages_are_refused_naming_the_knob():
    with pytest.raises(ValueError, match=r"distill.fitnet.stage: no hint connector maps the student's \(4, 4, 4\)"):
        hint_connector((4, 4, 4), (6, 16, 16))
    with pytest.raises(ValueError, match="distill.fitnet.stage: '1:' picks 2 stages of the student"):
        build_term("ce+fitnet", fitnet__stage="1:")
    with pytest.raises(ValueError, match=r"distill.fitnet.stage: the student has no stage\(s\) \['stage4'\]"):
        build_term("ce+fitnet", fitnet__stage="stage4")


def test_one_connector_per_teacher_weighted():
    other = Shapes(20, {"stage1": (5, 8, 8), "stage2": (10, 4, 4)})
    objective = build_term("ce+fitnet", teachers=(TEACHER, other), teacher_weights=[1.0, 3.0])
    term = objective.terms["fitnet"]
    assert term.pairs == [(1, 1), (1, 1)] and len(term.connectors) == 2  # stage2 of each model
    student, teachers = outputs(teachers=(TEACHER, other))
    term.eval()  # BatchNorm running statistics: the same value however often it runs
    single = [F.mse_loss(c(student.features[s]), t.features[j]) for c, (s, j), t in zip(term.connectors, term.pairs,
                                                                                         teachers)]
    value = term(Batch(student, teachers, torch.arange(B), torch.arange(B)))
    assert value.item() == pytest.approx(0.25 * single[0].item() + 0.75 * single[1].item(), rel=1e-6)


def test_gradients_reach_the_student_and_the_connector_never_the_teacher():
    check_gradients("ce+fitnet", "fitnet")


def test_the_hint_pre_stage_trains_before_distillation(digits):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": "fitnet", "distill.fitnet.hint_epochs": 1}), data, [teacher])
    assert trainer.objective.pre_stage_length == 1
    metrics = trainer.train_one_epoch()
    assert metrics["prestage/epochs"] == 1 and metrics["prestage/loss_fitnet"] > 0 and metrics["train/loss_fitnet"] > 0
