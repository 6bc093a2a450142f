"""A student's cost: MACs against a hand count, ONNX Runtime latency measured once per architecture."""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from orchestrator.deploy.cost import cost_metrics, student_cost
from orchestrator.models import ModelOutput, build_model, describe_model


class _Known(nn.Module):
    """A strided conv, a grouped conv, pooling and a linear layer: MACs countable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(8, 5)
        self.embedding_dim = 8

    def forward(self, x):
        f = self.conv2(torch.relu(self.conv1(x)))
        e = f.mean((2, 3))
        return ModelOutput([f], e, self.fc(e))


def test_macs_of_a_small_known_model_equal_a_hand_count() -> None:
    # 8x8 -> conv1 (stride 2) 4x4x4: 16 positions x 4 out x 9 taps; conv2 (2 groups of 2 in) 4x4x8:
    # 16 x 8 x (2 x 9); fc: 8 x 5. Biases, ReLU and pooling are not counted.
    info = describe_model(_Known(), in_channels=1, image_size=8)
    assert info["macs"] == 16 * 4 * 9 + 16 * 8 * 18 + 8 * 5
    # cnn_student_tiny at 28x28: 14x14x8 (1 in), 7x7x16 (8 in), 7x7x32 (16 in), then 32 -> 10
    tiny = describe_model(build_model("cnn_student_tiny", 10, 1), 1, 28)["macs"]
    assert tiny == 196 * 8 * 9 + 49 * 16 * 72 + 49 * 32 * 144 + 32 * 10


def test_size_knobs_change_the_macs_as_they_should() -> None:
    base = describe_model(build_model("cnn_student_tiny", 10, 1), 1, 28)["macs"]
    wide = describe_model(build_model("cnn_student_tiny", 10, 1, width=2.0), 1, 28)["macs"]
    deep = describe_model(build_model("cnn_student_tiny[depth=2]", 10, 1), 1, 28)["macs"]
    # doubling every width: the first conv (1 input channel) x2, the others x4, the classifier x2
    assert wide == 196 * 16 * 9 + 49 * 32 * 144 + 49 * 64 * 288 + 64 * 10
    # depth 2: one more stride-1 conv per stage at that stage's width and resolution
    assert deep == base + 196 * 8 * 72 + 49 * 16 * 144 + 49 * 32 * 288


def test_the_latency_measurement_is_cached_per_architecture(tmp_path) -> None:
    cost = student_cost("tiny_student", 10, 1, 8, threads=1, cache_dir=tmp_path)
    assert cost["threads"] == 1 and cost["input_shape"] == [1, 8, 8]
    assert cost["params"] == describe_model(build_model("tiny_student", 10, 1), 1, 8)["params"]
    assert all(math.isfinite(cost[k]) and cost[k] > 0 for k in ("latency_ms_b1", "latency_ms_b64"))
    (path,) = (tmp_path / "costs").iterdir()
    marked = {**cost, "latency_ms_b1": 12345.0}
    path.write_text(json.dumps(marked))  # a second call that measured again would not return this
    assert student_cost("tiny_student", 10, 1, 8, threads=1, cache_dir=tmp_path) == marked
    # another size, thread count or input is another architecture: measured, in its own file
    wide = student_cost("tiny_student[width=2.0]", 10, 1, 8, threads=1, cache_dir=tmp_path)
    assert wide["params"] > cost["params"] and wide["latency_ms_b1"] != 12345.0
    student_cost("tiny_student", 10, 1, 8, threads=2, cache_dir=tmp_path)
    assert len(list((tmp_path / "costs").iterdir())) == 3
    assert cost_metrics(marked) == {"cost/params": float(cost["params"]), "cost/macs": float(cost["macs"]),
                                    "cost/latency_ms": 12345.0, "cost/latency_ms_b64": cost["latency_ms_b64"]}


def test_cost_pareto_and_budget_load_neither_ray_nor_mlflow():
    import subprocess
    import sys

    code = ("import sys, orchestrator.deploy.cost, orchestrator.sweep.pareto, orchestrator.config.budget; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
