"""The default stages of every feature term select what RepDistiller selects, on every (teacher, student) pair of
the CRD paper's two tables (Tian et al., ICLR 2020, Tables 1 and 2), at CIFAR-100's 32x32.

Reference: HobbitLong/RepDistiller at b84f547c5db6a35318d4671d7d5c4de74c822403. ``REF_FEATURES`` are the
per-sample shapes of ``model(x, is_feat=True)[0][:-1]`` (the pooled vector dropped, as our ``features`` do),
computed by running its ``models/`` on a zero 2x3x32x32 batch (num_classes=100). ``REF_PICKS`` are the indices
its ``helper/loops.py``, ``helper/pretrain.py`` and ``train_student.py`` apply to that list. The pairs with
``ResNet50`` (its CIFAR ResNet-50) are not covered: that model is not in our zoo.
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
CROSS_ARCHITECTURE = [("vgg13", "MobileNetV2"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
                      ("wrn_40_2", "ShuffleV1")]
# Kept deviation: FitNet's default "-2" (the stage before the last) works on two-stage models too; it is
# RepDistiller's hint_layer 2 on every 4-stage model and one stage deeper on VGG and MobileNetV2
# (distill.fitnet.stage=2 reproduces RepDistiller there).
FITNET_DEVIATES = {"vgg13", "vgg8", "MobileNetV2"}
FEATURE_TERMS = sorted(REF_PICKS)


def _shapes(arch: str):
    return probe_shapes(build_model(arch, 100, 3), 3, 32)


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
        if name == "fitnet" and {student, teacher} & FITNET_DEVIATES:
            assert ours != reference, "FitNet's default now matches RepDistiller here: drop the kept deviation"
            continue
        assert [list(map(tuple, ours[0])), list(map(tuple, ours[1]))] == [reference[0], reference[1]], name
