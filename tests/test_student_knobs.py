"""The student's size knobs: forwarded to the builder, named in the architecture, refused where not taken."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config.schema import load_config, student_arch
from orchestrator.models import build_model, describe_model
from orchestrator.models.base import arch_spec, model_knobs, split_arch
from orchestrator.models.weights import load_weights
from orchestrator.sweep.cli import main
from test_sweep import TINY


def _channels(model) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_each_family_takes_its_knobs() -> None:
    assert model_knobs("cnn_student_small") == {"width": 1.0, "depth": 1}
    assert model_knobs("resnet8") == {"width": 1.0} and model_knobs("wrn_16_1") == {"width": 1.0}
    assert model_knobs("MobileNetV2") == {"width": 0.5}
    assert model_knobs("cnn_teacher") == {} and model_knobs("timm:resnet18") == {}


def test_knobs_size_the_models() -> None:
    assert _channels(build_model("cnn_student_small", 10, 1, width=0.5, depth=2)) == [8, 8, 16, 16, 32, 32]
    assert _channels(build_model("resnet8", 10, 1, width=2.0))[:3] == [32, 32, 32]
    wrn = describe_model(build_model("wrn_16_1", 10, 1, width=2.0), 1, 28)
    assert wrn["params"] == describe_model(build_model("wrn_16_2", 10, 1), 1, 28)["params"]
    half, full = (describe_model(build_model("MobileNetV2", 10, 1, width=w), 1, 28)["macs"] for w in (0.5, 1.0))
    assert half == describe_model(build_model("MobileNetV2", 10, 1), 1, 28)["macs"] < full


def test_architecture_names_carry_the_knobs_and_round_trip() -> None:
    assert arch_spec("cnn_student_small", {"width": 1, "depth": 1}) == "cnn_student_small"
    spec = arch_spec("cnn_student_small", {"width": 0.5, "depth": 2})
    assert spec == "cnn_student_small[depth=2,width=0.5]"
    assert split_arch(spec) == ("cnn_student_small", {"depth": 2, "width": 0.5})
    cfg = load_config(None, ["model.student=cnn_student_small", "model.student_width=0.5", "model.student_depth=2"])
    assert student_arch(cfg.model) == spec
    model = build_model(spec, 10, 1)
    loaded = load_weights(spec, model.state_dict(), 10, 1)  # as a checkpoint naming it is loaded
    assert _channels(loaded) == _channels(model)


@pytest.mark.parametrize("extra, key, allowed", [
    (["model.student_depth=2", "model.student=MobileNetV2"], "model.student_depth",
     "'MobileNetV2' takes model.student_width (its width, default 0.5)"),
    (["model.student_width=0.5", "model.student=cnn_teacher"], "model.student_width", "takes no size knobs"),
    (["model.student_width=0"], "model.student_width", "a number > 0"),
    (["model.student_depth=0"], "model.student_depth", "an integer >= 1"),
], ids=["depth-on-mobilenet", "width-on-teacher", "zero-width", "zero-depth"])
def test_knobs_a_student_does_not_take_exit_2_naming_the_key(extra, key, allowed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert f"config key '{key}'" in err and allowed in err, err


def test_training_a_model_alone_applies_its_own_knobs_not_the_students() -> None:
    from orchestrator.run.alone import alone_config

    cfg = load_config(None, ["model.student=cnn_student_small", "model.student_width=0.5"])
    assert student_arch(alone_config(cfg, "cnn_teacher", 1, 0.1).model) == "cnn_teacher"  # the teacher: no knobs
    alone = alone_config(cfg, student_arch(cfg.model), 1, 0.1)  # the student alone: the same architecture
    assert student_arch(alone.model) == "cnn_student_small[width=0.5]"
