"""Model zoo: the ModelOutput contract, the registry and the sizing promises."""

from __future__ import annotations

import pytest
import torch

from orchestrator.models import ModelOutput, build_model, describe_model, model_names
from orchestrator.models.torchvision_adapter import EXCLUDED, PREFIX, torchvision_model

NATIVE = [n for n in model_names() if not n.startswith(PREFIX)]
STUDENTS = ["cnn_student_small", "cnn_student_tiny"]
TEACHERS = ["cnn_teacher", "cnn_teacher_wide"]


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
    model = build_model(name, num_classes=7, in_channels=shape[0])
    model.train()
    out = model(torch.randn(2, *shape))  # batch of 2: BatchNorm needs > 1 value per channel
    check_output(model, out, batch=2, num_classes=7)
    model.eval()
    with torch.no_grad():
        check_output(model, model(torch.randn(1, *shape)), batch=1, num_classes=7)


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
