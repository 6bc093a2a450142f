"""Every registered term's value on fixed inputs, pinned (``tests/data/pinned/<case>.json``), so a refactor
cannot drift silently (torchdistill-style). Objectives are built through the registry from config values.

A case file: ``method``, ``config`` (dotted keys under ``distill.``), ``teachers`` (0-2), ``teacher_weights``,
``source`` (what computed the values) and ``expected``: the terms of two training steps (step 2 sees the
state, e.g. memory banks, that step 1 left). Terms are built right after ``torch.manual_seed(1)``; a term
that trains networks of its own (peers) builds :class:`PinnedNet` and runs it on the batch's images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_helpers import distill_config
from orchestrator.distill import build_objective, registry
from orchestrator.models.base import ModelOutput, Shapes

CASES = {p.stem: json.loads(p.read_text()) for p in sorted((Path(__file__).parent / "data" / "pinned").glob("*.json"))}
BATCH, CLASSES, N = 8, 10, 64
STUDENT = Shapes(12, {"stage1": (4, 8, 8), "stage2": (8, 4, 4)})
TEACHERS = [Shapes(16, {"stage1": (6, 8, 8), "stage2": (12, 4, 4)}),
            Shapes(20, {"stage1": (5, 8, 8), "stage2": (10, 4, 4)})]


class PinnedNet(nn.Module):
    """(B, 1, 8, 8) -> ModelOutput with STUDENT's shapes: stage1 (4, 8, 8), stage2 (8, 4, 4), embedding 12."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.embed, self.fc = nn.Linear(8, STUDENT.embedding), nn.Linear(STUDENT.embedding, CLASSES)

    def forward(self, x):
        f1 = F.relu(self.conv1(x))
        f2 = F.relu(self.conv2(f1))
        emb = self.embed(f2.mean(dim=(2, 3)))
        return ModelOutput([f1, f2], emb, self.fc(emb))


def _features(shapes: Shapes, g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(BATCH, *shape, generator=g) for shape in shapes.stages.values()]


def fixed_inputs():
    """Train labels (N,) and two steps of (indices, labels, student ModelOutput, two teacher ModelOutputs,
    images (B, 1, 8, 8))."""
    g = torch.Generator().manual_seed(2024)
    g_features = torch.Generator().manual_seed(2025)  # its own stream: the vector inputs stay as first pinned
    g_images = torch.Generator().manual_seed(2026)
    train_labels = torch.arange(N) % CLASSES
    steps = []
    for _ in range(2):
        idx = torch.randperm(N, generator=g)[:BATCH]
        s_logits = torch.randn(BATCH, CLASSES, generator=g) * 2
        t_logits = [torch.randn(BATCH, CLASSES, generator=g) * 2 for _ in range(2)]
        s_emb = torch.randn(BATCH, STUDENT.embedding, generator=g)
        t_emb = [torch.randn(BATCH, t.embedding, generator=g) for t in TEACHERS]
        student = ModelOutput(_features(STUDENT, g_features), s_emb, s_logits)
        teachers = [ModelOutput(_features(t, g_features), e, lo) for t, e, lo in zip(TEACHERS, t_emb, t_logits)]
        images = torch.randn(BATCH, 1, 8, 8, generator=g_images)
        steps.append((idx, train_labels[idx], student, teachers, images))
    return train_labels, steps


def test_every_term_is_pinned():
    pinned = {term for case in CASES.values() for step in case["expected"] for term in step}
    missing = set(registry.term_names()) - pinned
    assert not missing, f"registered term(s) without a pinned value in tests/data/pinned/: {sorted(missing)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_term_values_match_the_pinned_ones(case):
    spec = CASES[case]
    train_labels, steps = fixed_inputs()
    cfg = distill_config(spec["method"], **{k.replace(".", "__"): v for k, v in spec["config"].items()})
    torch.manual_seed(1)  # heads and connectors draw from the global RNG when they are built
    objective = build_objective(cfg, num_classes=CLASSES, student=STUDENT, teachers=TEACHERS[: spec["teachers"]],
                                train_labels=train_labels, teacher_weights=spec["teacher_weights"],
                                seed=3, make_student=PinnedNet)
    objective.train()
    for (idx, y, student, teachers, images), expected in zip(steps, spec["expected"], strict=True):
        terms = objective(student, teachers[: spec["teachers"]], y, idx, images=images)
        assert list(terms) == list(expected)
        for name, value in expected.items():
            torch.testing.assert_close(terms[name].detach(), torch.tensor(value), msg=f"{case} {name}")
