"""Registered terms on plain tensors (``orchestrator.distill.evaluate``), equal to the terms' own functions, and
the one-line example of docs/OBJECTIVES.md runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from orchestrator.distill import evaluate
from orchestrator.distill.at import at_loss
from orchestrator.distill.nst import nst_loss
from orchestrator.models.base import ModelOutput

DOC = Path(__file__).resolve().parents[1] / "docs" / "OBJECTIVES.md"


def _outputs(seed: int) -> tuple[ModelOutput, ModelOutput]:
    g = torch.Generator().manual_seed(seed)
    s = ModelOutput([torch.randn(8, 4, 8, 8, generator=g), torch.randn(8, 8, 4, 4, generator=g)],
                    torch.randn(8, 12, generator=g), torch.randn(8, 10, generator=g))
    t = ModelOutput([torch.randn(8, 6, 8, 8, generator=g), torch.randn(8, 12, 4, 4, generator=g)],
                    torch.randn(8, 16, generator=g), torch.randn(8, 10, generator=g))
    return s, t


def test_logit_terms_on_two_tensors():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    expected = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    torch.testing.assert_close(evaluate("kd", s, t, temperature=4.0), expected)
    labels = torch.arange(8)
    torch.testing.assert_close(evaluate("ce", s, labels=labels), F.cross_entropy(s, labels))
    with pytest.raises(ValueError, match="reads labels"):
        evaluate("ce", s)


def test_feature_terms_on_model_outputs_with_their_knobs():
    s, t = _outputs(0)
    torch.testing.assert_close(evaluate("at", s, t, p=1.0, signed=True, stages="0:"),
                               sum(at_loss(s.features[i], t.features[i], 1.0, signed=True) for i in (0, 1)))
    torch.testing.assert_close(evaluate("nst", s, t), nst_loss(s.features[1], t.features[1]))  # default "1:"


def test_the_doc_example_runs():
    line = next(m.group(1) for m in re.finditer(r"`(python -c .*?)`", DOC.read_text()) if "evaluate" in m.group(1))
    code = re.match(r'python -c "(.*)"', line).group(1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"tensor\([0-9.]+\)\n", done.stdout), done.stdout


def test_per_stage_pair_values_and_the_hint_loss_on_tensors():
    from orchestrator.distill.fitnet import hint_loss
    from orchestrator.distill.fsp import fsp_loss, fsp_losses
    from orchestrator.distill.kdsvd import kdsvd_loss, kdsvd_losses

    g = torch.Generator().manual_seed(3)
    student = [torch.randn(4, c, h, h, generator=g) for c, h in ((4, 8), (8, 4), (8, 2))]
    teacher = [torch.randn(4, c, h, h, generator=g) for c, h in ((4, 8), (8, 4), (8, 2))]
    for total, per_pair in ((fsp_loss, fsp_losses), (kdsvd_loss, kdsvd_losses)):
        values = per_pair(student, teacher)
        assert len(values) == 2  # three stages, two consecutive pairs (RepDistiller's loss_group)
        torch.testing.assert_close(sum(values), total(student, teacher))
    torch.testing.assert_close(hint_loss(student[0], teacher[0]), ((student[0] - teacher[0]) ** 2).mean())
