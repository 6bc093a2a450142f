"""Model zoo: the ModelOutput contract, the registry and the sizing promises."""

from __future__ import annotations

import functools

import pytest
import torch

from orchestrator.models import ModelOutput, build_model, describe_model, model_names
from orchestrator.models.base import stage_names
from orchestrator.models.torchvision_adapter import EXCLUDED, PREFIX, torchvision_model

NATIVE = [n for n in model_names() if not n.startswith(PREFIX)]
STUDENTS = ["cnn_student_small", "cnn_student_tiny"]
TEACHERS = ["cnn_teacher", "cnn_teacher_wide"]
NUM_CLASSES = 100

# Parameters at 100 classes and 3 input channels of RepDistiller's CIFAR models (the CRD paper's zoo),
# measured by instantiating HobbitLong/RepDistiller@b84f547c5db6a35318d4671d7d5c4de74c822403
# models/*.py (model_dict[name](num_classes=100)) with this project's torch.
REPDISTILLER_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756, "resnet44": 667_188,
    "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436, "vgg19": 20_086_692,
    "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528, "ResNet50": 23_705_252,
}
ZOO = list(REPDISTILLER_PARAMS)


@functools.cache
def built(name: str, in_channels: int) -> torch.nn.Module:
    """Each (model, in_channels) built once for this module (the big zoo nets take about a second)."""
    torch.manual_seed(0)
    return build_model(name, num_classes=NUM_CLASSES, in_channels=in_channels)


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_free_models():
    """One torch thread: batches of 1-2 images are faster without thread hand-offs (much so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    built.cache_clear()


def check_output(model, out, batch: int, num_classes: int) -> None:
    assert isinstance(out, ModelOutput)
    assert out.features, "features must not be empty"
    for f in out.features:
        assert f.dim() == 4 and f.shape[0] == batch
    assert out.embedding.shape == (batch, model.embedding_dim)
    assert out.logits.shape == (batch, num_classes)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", NATIVE)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)], ids=["1x28", "3x32", "1x8"])
def test_native_models_follow_the_contract(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = built(name, shape[0])
    model.train()
    out = model(torch.randn(2, *shape))  # batch of 2: BatchNorm needs > 1 value per channel
    check_output(model, out, batch=2, num_classes=NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        check_output(model, model(torch.randn(1, *shape)), batch=1, num_classes=NUM_CLASSES)


def test_gradients_reach_every_parameter() -> None:
    model = build_model("cnn_teacher", num_classes=10, in_channels=1)
    out = model(torch.randn(4, 1, 28, 28))
    (out.logits.sum() + out.embedding.sum() + sum(f.mean() for f in out.features)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'no_such_net'") as excinfo:
        build_model("no_such_net", num_classes=10, in_channels=1)
    assert "cnn_teacher" in str(excinfo.value) and "tiny_student" in str(excinfo.value)


def test_registry_has_the_promised_models() -> None:
    names = set(model_names())
    expected = {*TEACHERS, *STUDENTS, "tiny_teacher", "tiny_student", "resnet8x4", "resnet32x4", "tv_resnet18"}
    assert expected <= names


@pytest.mark.parametrize("student", STUDENTS)
def test_students_have_10x_fewer_flops_than_the_teacher(student: str) -> None:
    teacher = describe_model(build_model("cnn_teacher", 10, 1), in_channels=1, image_size=28)
    small = describe_model(build_model(student, 10, 1), in_channels=1, image_size=28)
    assert small["flops"] * 10 <= teacher["flops"]
    assert small["params"] < teacher["params"]


def test_teachers_have_different_embedding_sizes() -> None:
    dims = {build_model(name, 10, 1).embedding_dim for name in TEACHERS}
    assert len(dims) == len(TEACHERS)


def test_describe_model_counts_macs_exactly() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)
    )
    model.embedding_dim = 5
    info = describe_model(model, in_channels=1, image_size=8)
    macs = 8 * 8 * 4 * 9 + 256 * 5
    assert info == {"params": 4 * 9 + 4 + 256 * 5 + 5, "macs": macs, "flops": 2 * macs, "embedding_dim": 5}


def test_describe_model_keeps_the_mode() -> None:
    model = build_model("tiny_student", 10, 1)
    model.train()
    describe_model(model, 1, 8)
    assert model.training


def test_tiny_models_are_tiny_and_work_on_digits() -> None:
    for name in ("tiny_teacher", "tiny_student"):
        model = build_model(name, num_classes=10, in_channels=1)
        assert describe_model(model, 1, 8)["params"] < 10_000
        check_output(model, model(torch.randn(3, 1, 8, 8)), batch=3, num_classes=10)
    teacher, student = (build_model(n, 10, 1) for n in ("tiny_teacher", "tiny_student"))
    assert teacher.embedding_dim != student.embedding_dim


def test_torchvision_adapter_resnet18_one_channel() -> None:
    torch.manual_seed(0)
    model = build_model("tv_resnet18", num_classes=10, in_channels=1)
    assert model.embedding_dim == 512
    out = model(torch.randn(2, 1, 32, 32))
    check_output(model, out, batch=2, num_classes=10)
    assert len(out.features) == 5  # stem relu, layer1..layer4
    assert [f.shape[1] for f in out.features] == [64, 64, 128, 256, 512]
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        check_output(model, model(torch.randn(1, 1, 8, 8)), batch=1, num_classes=10)


def test_torchvision_adapter_takes_the_embedding_before_dropout() -> None:
    torch.manual_seed(0)
    model = build_model("tv_mobilenet_v3_small", num_classes=4, in_channels=3)
    assert isinstance(model.dropout, torch.nn.Dropout)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
        check_output(model, out, batch=2, num_classes=4)
        assert torch.allclose(out.logits, model.fc(out.embedding))


def test_torchvision_excluded_and_unknown_names() -> None:
    names = model_names()
    assert not any(n.startswith(PREFIX + prefix) for n in names for prefix in EXCLUDED)
    with pytest.raises(ValueError, match="unknown torchvision"):
        torchvision_model("resnet_nonexistent", 10, 3)


# --- The CIFAR zoo: RepDistiller's models, stage by stage ---------------------------------------------------


def zoo_plan(name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    """(channels per feature, their sides at 32x32, their sides at 28x28, embedding dim); the 32x32 shapes
    are those of RepDistiller's ``is_feat=True`` features (f0..fN) at the commit above."""
    resnet_sides = ((32, 32, 16, 8), (28, 28, 14, 7))
    shuffle_sides = ((32, 16, 8, 4), (28, 14, 7, 4))
    if name.endswith("x4"):
        return (32, 64, 128, 256), *resnet_sides, 256
    if name == "ResNet50":
        return (64, 256, 512, 1024, 2048), (32, 32, 16, 8, 4), (28, 28, 14, 7, 4), 2048
    if name.startswith("resnet"):
        return (16, 16, 32, 64), *resnet_sides, 64
    if name.startswith("wrn"):
        k = int(name.split("_")[2])
        return (16, 16 * k, 32 * k, 64 * k), *resnet_sides, 64 * k
    if name.startswith("vgg"):
        return (64, 128, 256, 512, 512), (32, 16, 8, 4, 4), (28, 14, 7, 4, 4), 512
    if name == "MobileNetV2":
        return (16, 12, 16, 48, 160), (16, 16, 8, 4, 2), (14, 14, 7, 4, 2), 1280
    if name == "ShuffleV1":
        return (24, 240, 480, 960), *shuffle_sides, 960
    assert name == "ShuffleV2", name
    return (24, 116, 232, 464), *shuffle_sides, 1024


def test_zoo_has_repdistillers_cifar_set() -> None:
    assert set(ZOO) <= set(model_names())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_parameter_counts_match_repdistiller(name: str) -> None:
    assert sum(p.numel() for p in built(name, 3).parameters()) == REPDISTILLER_PARAMS[name]


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("in_channels, side", [(1, 28), (3, 32)], ids=["1x28", "3x32"])
def test_zoo_stages_are_named_and_shaped(name: str, in_channels: int, side: int) -> None:
    channels, sides32, sides28, embedding_dim = zoo_plan(name)
    model = built(name, in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, side, side))
    sides = sides32 if side == 32 else sides28
    assert [tuple(f.shape[1:]) for f in out.features] == [(c, s, s) for c, s in zip(channels, sides)]
    assert model.stage_names == stage_names(model, len(out.features))
    assert model.stage_names == ("stem", *(f"stage{i}" for i in range(1, len(channels))))
    assert model.embedding_dim == embedding_dim and out.embedding.shape == (2, embedding_dim)
    assert out.logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_trains_end_to_end(name: str) -> None:
    model = built(name, 1).train()
    out = model(torch.randn(2, 1, 28, 28))
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1]))
    (loss + out.embedding.mean() + sum(f.mean() for f in out.features)).backward()
    try:
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_preact_switches_the_stages_to_pre_relu(name: str) -> None:
    """``preact=True`` gives RepDistiller's ``preact=True`` features: same shapes and stem, the stages before
    their ReLU (negative values where the default is post-ReLU); MobileNetV2's stages have no ReLU to skip."""
    model = built(name, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        model.preact = True
        try:
            pre = model(x)
        finally:
            model.preact = False
    assert [f.shape for f in pre.features] == [f.shape for f in plain.features]
    torch.testing.assert_close(pre.features[0], plain.features[0])
    torch.testing.assert_close(pre.logits, plain.logits)
    if name == "MobileNetV2":
        assert all(torch.equal(a, b) for a, b in zip(pre.features, plain.features))
        return
    assert all((f < 0).any() for f in pre.features[1:])
    if not name.startswith("wrn"):  # a WRN stage output is a residual sum, before any BN-ReLU
        assert all((f >= 0).all() for f in plain.features)
