"""Student costs in a sweep: the architectures a space reaches, and cost/* in MLflow, leaderboard, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import load_config
from orchestrator.models import build_model, describe_model
from orchestrator.models.base import arch_spec
from orchestrator.sweep.search.space import load_space
from orchestrator.sweep.cli import main
from orchestrator.sweep.costs import reachable_students
from test_sweep import runs_by_kind, tiny_args

COMPRESS = str(Path(__file__).parent / "data" / "tiny_compress_space.yaml")
COST_METRICS = {"cost/params", "cost/macs", "cost/latency_ms", "cost/latency_ms_b64"}


def _space(tmp_path, params: dict, fixed: dict | None = None):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"fixed": fixed or {}, "params": params}))
    return load_space(str(path), load_config(None, ["model.student=cnn_student_small"]))


def test_reachable_students_follow_choices_and_conditions(tmp_path):
    space = _space(tmp_path, {
        "model.student": {"type": "categorical", "choices": ["cnn_student_small", "MobileNetV2", "resnet8"]},
        "model.student_width": {"type": "categorical", "choices": [0.5, 1.0],
                                "when": {"model.student": ["cnn_student_small", "MobileNetV2"]}},
        "model.student_depth": {"type": "int", "low": 1, "high": 2, "when": {"model.student": ["cnn_student_small"]}},
    })
    archs, continuous = reachable_students(space, load_config(None, ["model.student=cnn_student_small"]))
    assert archs == sorted(["cnn_student_small", "cnn_student_small[width=0.5]", "cnn_student_small[depth=2]",
                            "cnn_student_small[depth=2,width=0.5]", "MobileNetV2", "MobileNetV2[width=1.0]", "resnet8"])
    assert continuous == []


def test_a_continuous_width_is_named_and_the_base_student_kept(tmp_path):
    space = _space(tmp_path, {"model.student_width": {"type": "float", "low": 0.5, "high": 2.0}})
    archs, continuous = reachable_students(space, load_config(None, ["model.student=cnn_student_small"]))
    assert archs == ["cnn_student_small"] and continuous == ["model.student_width"]
    stepped = _space(tmp_path, {"model.student_width": {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5}})
    archs, continuous = reachable_students(stepped, load_config(None, ["model.student=cnn_student_small"]))
    assert archs == ["cnn_student_small", "cnn_student_small[width=0.5]", "cnn_student_small[width=1.5]"]


def test_every_trial_logs_its_students_cost(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, f"sweep.search_space={COMPRESS}", "sweep.paper_defaults=false", samples=3)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "student costs (ONNX Runtime, 1 intra-op thread" in out and "cost of tiny_student[width=0.5]" in out
    assert len(list((isolated_cache / "costs").iterdir())) == 4  # 2 widths x 2 depths, measured once each
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kinds = runs_by_kind(uri)
    for run in kinds["trial"] + kinds["confirm"]:
        assert COST_METRICS <= set(run.data.metrics), run.info.run_name
        width, depth = float(run.data.params["model.student_width"]), int(run.data.params["model.student_depth"])
        assert run.data.tags["cost.arch"] == arch_spec("tiny_student", {"width": width, "depth": depth})
        assert run.data.tags["cost.threads"] == "1"
    # Different widths cost different MACs; the leaderboard shows each trial's.
    exp_dir = next((tmp_path / "runs").glob("tiny-*"))
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert COST_METRICS <= set(board.columns)
    for _, row in board.iterrows():
        model = build_model("tiny_student", 10, 1, width=row["model.student_width"], depth=int(row["model.student_depth"]))
        assert row["cost/macs"] == describe_model(model, 1, 8)["macs"]
    # summary.json and the parent run: the chosen config's cost and the student alone's (same architecture).
    summary = json.loads((exp_dir / "summary.json").read_text())
    chosen = summary["best_params"]
    chosen_row = board[(board["model.student_width"] == chosen["model.student_width"])
                       & (board["model.student_depth"] == chosen["model.student_depth"])].iloc[0]
    assert summary["cost/macs"] == chosen_row["cost/macs"]
    assert summary["student_alone/cost/macs"] == summary["cost/macs"]
    parent = kinds["sweep"][0]
    assert {"cost/macs", "cost/latency_ms", "student_alone/cost/macs"} <= set(parent.data.metrics)
    client = MlflowClient(uri)
    assert client.get_run(parent.info.run_id).data.metrics["cost/params"] == summary["cost/params"]
    (version,) = client.search_model_versions("name='distill-student'")
    assert float(version.tags["cost/macs"]) == summary["cost/macs"] and "cost/latency_ms" in version.tags


def test_dry_run_shows_the_students_with_their_macs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *tiny_args(tmp_path)[6:], f"sweep.search_space={COMPRESS}"]) == 0
    out = capsys.readouterr().out
    assert "students (4; MACs per 1x8x8 image" in out
    small = describe_model(build_model("tiny_student", 10, 1, width=0.5), 1, 8)["macs"]
    assert f"tiny_student[width=0.5]" in out and f"{small / 1e6:.3f} M MACs" in out
    assert "span:" in out and "dry run: nothing was started" in out
    assert "student sampled (model.student_width, model.student_depth: see 'students' below)" in out
