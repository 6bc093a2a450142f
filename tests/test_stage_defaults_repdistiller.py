"""The default stages of every feature term select what RepDistiller selects, on every (teacher, student) pair of
the CRD paper's two tables (Tian et al., ICLR 2020, Tables 1 and 2), at CIFAR-100's 32x32.

Reference: HobbitLong/RepDistiller at b84f547c5db6a35318d4671d7d5c4de74c822403. ``REF_FEATURES`` are the
per-sample shapes of ``model(x, is_feat=True)[0][:-1]`` (the pooled vector dropped, as our ``features`` do),
computed by running its ``models/`` on a zero 2x3x32x32 batch (num_classes=100). ``REF_PICKS`` are the indices
its ``helper/loops.py``, ``helper/pretrain.py`` and ``train_student.py`` apply to that list.
The project's own students (no stem, 2-3 stages) are checked to build every feature term at its default.
"""

from __future__ import annotations

import pytest
import torch

from orchestrator.distill.base import TermContext
from orchestrator.distill.registry import term
from orchestrator.models import build_model
from orchestrator.models.base import probe_shapes

REF_FEATURES = {
    "wrn_40_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "wrn_16_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "wrn_40_1": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet56": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet20": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet110": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet32": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet32x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "vgg13": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "vgg8": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "MobileNetV2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)],
    "ResNet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
}
# feat[1:-1] etc. of the full list = these slices of REF_FEATURES (which already drops feat[-1]).
REF_PICKS = {
    "at": slice(1, None), "nst": slice(1, None), "kdsvd": slice(1, None), "vid": slice(1, None),  # feat[1:-1]
    "ab": slice(1, None),  # feat[1:-1] (pre-activation; same shapes)
    "sp": slice(-1, None), "ft": slice(-1, None),  # [feat[-2]]
    "fsp": slice(None),  # feat[:-1]
    "fitnet": slice(2, 3),  # feat[hint_layer], --hint_layer 2
}
SAME_ARCHITECTURE = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
                     ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
                     ("vgg13", "vgg8")]
CROSS_ARCHITECTURE = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"),
                      ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
FEATURE_TERMS = sorted(REF_PICKS)
# The project's own pairs (Fashion-MNIST 28x28 and digits 8x8; students also at their depth knob), which
# name their 2-4 stages stage1..stageN: every feature term builds at its defaults.
OWN_PAIRS = [("cnn_teacher", "cnn_student_tiny", 1, 28), ("cnn_teacher", "cnn_student_small", 1, 28),
             ("cnn_teacher_wide", "cnn_student_tiny[depth=2]", 1, 28), ("tiny_teacher", "tiny_student", 1, 8),
             ("resnet32x4", "cnn_student_tiny", 3, 32)]


def _shapes(arch: str, channels: int = 3, size: int = 32):
    return probe_shapes(build_model(arch, 100, channels), channels, size)


def _picked(obj) -> tuple[list[int], list[int]]:
    """(student positions, teacher positions) a built term reads, whatever its layout."""
    if hasattr(obj, "s_pos"):
        s, t = obj.s_pos, obj.t_pos[0]
        return ([s] if isinstance(s, int) else list(s)), ([t] if isinstance(t, int) else list(t))
    pairs = obj.pairs[0]
    pairs = pairs if isinstance(pairs, list) else [pairs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.parametrize("teacher,student", SAME_ARCHITECTURE + CROSS_ARCHITECTURE)
def test_default_stages_match_repdistiller_on_the_crd_paper_pairs(teacher, student):
    s_shapes, t_shapes = _shapes(student), _shapes(teacher)
    assert [tuple(v) for v in s_shapes.stages.values()] == REF_FEATURES[student]
    assert [tuple(v) for v in t_shapes.stages.values()] == REF_FEATURES[teacher]
    ctx = TermContext(100, s_shapes, (t_shapes,), (1.0,), torch.zeros(0, dtype=torch.long))
    for name in FEATURE_TERMS:
        spec = term(name)
        s_pos, t_pos = _picked(spec.build(ctx, spec.knobs()))
        ours = ([list(s_shapes.stages.values())[i] for i in s_pos], [list(t_shapes.stages.values())[j] for j in t_pos])
        reference = (REF_FEATURES[student][REF_PICKS[name]], REF_FEATURES[teacher][REF_PICKS[name]])
        assert [list(map(tuple, ours[0])), list(map(tuple, ours[1]))] == [reference[0], reference[1]], name


@pytest.mark.parametrize("teacher,student,channels,size", OWN_PAIRS)
def test_default_stages_build_on_the_projects_own_students(teacher, student, channels, size):
    """FitNet's default ``stage2`` exists on two-stage students (a position 2 would not) and builds; the other
    terms build too, or (KDSVD on two-stage models: ``1:`` leaves one stage) refuse with their stage key."""
    s_shapes, t_shapes = _shapes(student, channels, size), _shapes(teacher, channels, size)
    ctx = TermContext(100, s_shapes, (t_shapes,), (1.0,), torch.zeros(0, dtype=torch.long))
    refused = []
    for name in FEATURE_TERMS:
        spec = term(name)
        try:
            built = spec.build(ctx, spec.knobs())
        except ValueError as exc:
            assert str(exc).startswith(f"distill.{name}.stage"), exc
            refused.append(name)
            continue
        if name == "fitnet":
            s_pos, t_pos = _picked(built)
            assert [list(s_shapes.stages)[i] for i in s_pos] == [list(t_shapes.stages)[j] for j in t_pos] == ["stage2"]
    assert refused == (["kdsvd"] if len(s_shapes.stages) == 2 else []), refused


def test_a_renormalised_zoo_teacher_keeps_its_stage_names():
    """A pretrained teacher wrapped for its own normalisation names its stages as the zoo model does, so the
    name-based default (``stage2`` = RepDistiller's feat[2]) picks the same map."""
    from orchestrator.models.wrapped import Renormalize

    model = build_model("resnet8x4", 10, 3)
    wrapped = Renormalize(model, (0.5,), (0.25,), (0.4,), (0.2,), channels=3)
    assert probe_shapes(wrapped, 3, 32) == probe_shapes(model, 3, 32)
    assert list(probe_shapes(wrapped, 3, 32).stages)[:3] == ["stem", "stage1", "stage2"]
