"""The front's selection, points, table and plot on hand-made trial results (no Ray, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.config.budget import parse_budget
from orchestrator.sweep.confirm.front import FrontSpec, NoStudentFits, budget_line, confirmed_points, select, spec_of, table
from orchestrator.sweep.leaderboard import TrialSummary
from orchestrator.report.plots import plot_front
from orchestrator.sweep.confirm.front_stage import ensemble_row

SPEC = FrontSpec("val/acc1", "max", "cost/latency_ms")
# width -> (latency ms, MACs)
COST = {0.25: (0.01, 1e5), 0.5: (0.02, 3e5), 1.0: (0.05, 1e6), 2.0: (0.15, 4e6)}


def _cost(params: dict) -> dict:
    ms, macs = COST[params["model.student_width"]]
    return {"cost/latency_ms": ms, "cost/macs": macs, "cost/params": macs / 10}


def _record(params: dict) -> dict:
    return {"arch": f"cnn_student_small[width={params['model.student_width']}]", **_cost(params)}


def _trial(number: int, width: float, acc: float, lr: float = 0.1, outcome: str = "completed") -> TrialSummary:
    params = {"model.student_width": width, "distill.method": "kd", "train.lr": lr}
    return TrialSummary(number, f"t{number}", outcome, 2, {"val/acc1": acc}, params, f"/ckpt/{number}")


TRIALS = [
    _trial(0, 1.0, 0.90),                # front
    _trial(1, 1.0, 0.88, lr=0.2),        # dominated by 0 (same latency, less accurate)
    _trial(2, 0.5, 0.86),                # front
    _trial(3, 0.5, 0.86, lr=0.3),        # front: a tie with 2 in both objectives
    _trial(4, 2.0, 0.89),                # dominated by 0 (slower and less accurate)
    _trial(5, 0.25, 0.80),               # front: the fastest
    _trial(6, 2.0, 0.95, outcome="early_stopped"),  # stopped early: never a candidate
    _trial(7, 0.5, 0.70),                # dominated by 2 and 3
    _trial(8, 0.5, 0.87, lr=0.3),        # the same config as 3, searched twice: counts once, at its best
]


def test_select_confirms_the_pareto_front_of_completed_trials_cheapest_first():
    cands = select(TRIALS, [], SPEC, top_k=10, cost_of=_cost)
    distilled = [c for c in cands if c.role != "alone"]
    # trial 8 (0.87) replaces trial 3 (same params, 0.86) and then dominates trial 2 (0.86 at the same cost)
    assert [c.trial for c in distilled] == [5, 8, 0]
    alones = [c for c in cands if c.role == "alone"]
    assert len(alones) == 3 and all(c.alone is not None for c in distilled)
    for c in distilled:  # each paired with its own architecture and optimiser settings alone
        assert c.alone.params == {"model.student_width": c.params["model.student_width"], "train.lr": c.params["train.lr"]}
        assert c.alone.overrides["distill.method"] == "ce" and c.alone.label == f"trial {c.trial} alone"


def test_ties_are_kept_and_a_long_front_is_spread_along_the_cost():
    trials = [t for t in TRIALS if t.number != 8]
    distilled = [c.trial for c in select(trials, [], SPEC, top_k=10, cost_of=_cost) if c.role != "alone"]
    assert distilled == [5, 2, 0]  # the tie 2/3 (equal in both objectives) is not dominated: confirmed once
    capped = [c.trial for c in select(trials, [], SPEC, top_k=2, cost_of=_cost) if c.role != "alone"]
    assert capped == [5, 0]  # both ends of the front
    longer = trials + [_trial(9, 2.0, 0.93), _trial(10, 0.25, 0.79, lr=0.3)]  # 9 extends the front; 10 is dominated
    assert [c.trial for c in select(longer, [], SPEC, top_k=10, cost_of=_cost) if c.role != "alone"] == [5, 2, 0, 9]
    capped = [c.trial for c in select(longer, [], SPEC, top_k=3, cost_of=_cost) if c.role != "alone"]
    assert capped == [5, 2, 9] or capped == [5, 0, 9]  # both ends, one between


def test_without_baseline_no_alone_is_trained():
    assert all(c.role != "alone" and c.alone is None
               for c in select(TRIALS, [], SPEC, top_k=5, cost_of=_cost, baseline=False))


def test_budget_mode_picks_the_most_accurate_trial_within_the_budget():
    spec = FrontSpec("val/acc1", "max", "cost/latency_ms", parse_budget("latency_ms <= 0.02"))
    cands = select(TRIALS, [], spec, top_k=3, cost_of=_cost)
    assert [c.trial for c in cands if c.role != "alone"] == [8]  # 0.87 at 0.02 ms; trial 0 (0.90) is over budget
    macs = FrontSpec("val/acc1", "max", "cost/macs", parse_budget("macs <= 1e5"))
    assert [c.trial for c in select(TRIALS, [], macs, top_k=3, cost_of=_cost) if c.role != "alone"] == [5]
    never = FrontSpec("val/acc1", "max", "cost/macs", parse_budget("macs <= 10"))
    with pytest.raises(NoStudentFits, match=r"no student fits cost/macs <= 10: the cheapest trial that was scored, trial 5"):
        select(TRIALS, [], never, top_k=3, cost_of=_cost)
    # Within the budget only a trial stopped early: it is the one (completed trials first, when one qualifies).
    tight = FrontSpec("val/acc1", "max", "cost/macs", parse_budget("macs <= 1e5"))
    stopped = [_trial(0, 1.0, 0.9), _trial(1, 0.25, 0.7, outcome="early_stopped")]
    assert [c.trial for c in select(stopped, [], tight, top_k=3, cost_of=_cost) if c.role != "alone"] == [1]
    # No trial completed: the front of those stopped early; none scored at all: an error.
    stopped = [_trial(0, 1.0, 0.9, outcome="early_stopped"), _trial(1, 0.25, 0.7, outcome="early_stopped")]
    assert [c.trial for c in select(stopped, [], SPEC, top_k=3, cost_of=_cost) if c.role != "alone"] == [1, 0]
    with pytest.raises(ValueError, match="no trial reported val/acc1"):
        select([_trial(0, 1.0, 0.9, outcome="failed")], [], SPEC, top_k=3, cost_of=_cost)


def test_spec_of_reads_objectives_and_budget():
    assert spec_of(None, None, "val/acc1", "max") is None
    assert spec_of({"val/acc1": "max"}, None, "val/acc1", "max") is None  # no cost: the top-k confirmation
    spec = spec_of({"val/acc1": "max", "cost/macs": "min"}, None, "val/acc1", "max")
    assert spec == FrontSpec("val/acc1", "max", "cost/macs")
    budget = parse_budget("cost/latency_ms <= 0.02")
    assert spec_of(None, budget, "val/acc1", "max") == FrontSpec("val/acc1", "max", "cost/latency_ms", budget)


def _confirmed(seeds_acc: dict[int, list[float]]):
    """TRIALS' front confirmed with made-up test results: trial -> [distilled per seed, alone per seed]."""
    cands = select(TRIALS, [], SPEC, top_k=10, cost_of=_cost)
    for c in cands:
        if c.role != "alone":
            distilled, alone = seeds_acc[c.trial]
            c.test, c.val = dict(enumerate(distilled, 1)), dict(enumerate(distilled, 1))
            c.alone.test = dict(enumerate(alone, 1))
    return cands


def test_confirmed_points_carry_cost_gain_and_the_confirmed_front(tmp_path):
    cands = _confirmed({5: ([0.80, 0.82, 0.81], [0.78, 0.79, 0.77]), 8: ([0.79, 0.80, 0.81], [0.79, 0.80, 0.80]),
                        0: ([0.90, 0.91, 0.92], [0.88, 0.90, 0.89])})
    points = confirmed_points(cands, SPEC, _record, 0.95)
    assert [p.cand.trial for p in points] == [5, 8, 0]
    assert points[0].arch == "cnn_student_small[width=0.25]" and points[0].cost["cost/macs"] == 1e5
    assert points[0].gain.mean == pytest.approx(0.03) and points[0].gain.significant
    assert not points[1].gain.significant
    # On fresh seeds trial 8 is less accurate than the cheaper trial 5: off the confirmed front.
    assert [p.on_front for p in points] == [True, False, True]
    summary = points[0].summary({"onnx": "front/1.onnx"})
    assert summary["alone_test_mean"] == pytest.approx(0.78) and summary["gain_vs_alone"]["significant"] is True
    assert summary["cost/latency_ms"] == 0.01 and summary["onnx"] == "front/1.onnx"
    tags = points[0].tags()
    assert tags["arch"] == "cnn_student_small[width=0.25]" and tags["gain_vs_alone_significant"] == "true"
    assert tags["cost/macs"] == "100000" and tags["knobs"] == "method=kd  lr=0.1"
    teacher = {"label": "teacher cnn_teacher", "test_acc1": 0.95, "cost/latency_ms": 0.4, "cost/macs": 1.5e7,
               "cost/params": 1e6}
    other = {**teacher, "label": "teacher cnn_teacher_wide", "test_acc1": 0.94}
    references = [ensemble_row([teacher, other], 0.955), teacher, other]
    assert references[0]["cost/macs"] == 3e7 and references[0]["cost/latency_ms"] == pytest.approx(0.8)
    assert ensemble_row([teacher, {"label": "TorchScript", "test_acc1": 0.9}], 0.96).keys() == {"label", "test_acc1"}
    text = table(points, SPEC, [1, 2, 3], references)
    assert "ensemble of 2 (mean softmax)" in text and "95.50" in text and "teacher cnn_teacher_wide" in text
    assert text.count("(reference)") == 3 and "30.000" in text  # the ensemble's MACs: both teachers' summed
    assert "1. cnn_student_small[width=0.25]" in text and "+3.00 points [" in text and "not significant" in text
    path = plot_front(points, references, [1, 2, 3], tmp_path / "front.png", "front", budget_ms=0.02)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    line = budget_line(points[0], parse_budget("latency_ms <= 0.02"))
    assert line.startswith("Within cost/latency_ms <= 0.02: cnn_student_small[width=0.25] (trial 5;")
    assert "over the same architecture alone: +3.00 points" in line


FRONT_SPACE = str(Path(__file__).parent / "data" / "tiny_front_space.yaml")


@pytest.mark.slow
def test_a_tiny_compress_sweep_ends_with_a_confirmed_front(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    """Digits through Ray Tune + Ray Train: the front of a 1/2-channel and a 16/32-channel student, each point
    re-trained on 2 fresh seeds with its architecture alone, exported to ONNX, logged and registered."""
    from orchestrator.sweep.cli import main
    from test_sweep import tiny_args

    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, f"sweep.search_space={FRONT_SPACE}", "sweep.objectives=[val/acc1:max,cost/macs:min]",
                     "sweep.confirm.top_k=3", samples=4)
    assert main(args) == 0
    out = capsys.readouterr().out
    print(out)  # shown if an assertion fails
    assert "the accuracy-vs-cost front (val/acc1 max, cost/macs min): re-trained on fresh seeds [1, 2]" in out
    assert "teacher tiny_teacher" in out and "(reference)" in out
    assert_front_published(tmp_path)
    # resumed after the front was published: shown again, nothing registered or published twice
    from mlflow.tracking import MlflowClient

    from test_sweep import runs_by_kind

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions = len(MlflowClient(uri).search_model_versions("name='distill-student'"))
    assert main([*args, "--resume"]) == 0
    assert "teacher tiny_teacher" in capsys.readouterr().out
    assert len(MlflowClient(uri).search_model_versions("name='distill-student'")) == versions
    assert len(runs_by_kind(uri)["front"]) == 2


def assert_front_published(tmp_path: Path) -> None:
    """The sweep in ``tmp_path`` ended with a front of the two students, each point logged and registered."""
    import onnxruntime
    from mlflow.tracking import MlflowClient

    from test_sweep import runs_by_kind

    exp_dir = next((tmp_path / "runs").glob("tiny-*"))
    summary = json.loads((exp_dir / "summary.json").read_text())
    section = summary["front"]
    points = section["points"]
    assert len(points) >= 2 and section["objectives"] == {"val/acc1": "max", "cost/macs": "min"}
    assert [p["arch"] for p in points] == ["tiny_student[width=0.125]", "tiny_student[width=2.0]"]
    assert section["teacher"]["cost/macs"] >= points[-1]["cost/macs"] > points[0]["cost/macs"]  # tiny_teacher = width 2
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    kinds = runs_by_kind(uri)
    (parent,) = kinds["sweep"]
    confirm_jobs = kinds["confirm"]
    point_runs = {r.data.tags["front_point"]: r for r in kinds["front"]}
    versions = {str(v.version): v for v in client.search_model_versions("name='distill-student'")}
    for i, p in enumerate(points, 1):
        # its alone pair: the same architecture, CE only, trained on the same fresh seeds
        assert p["seeds"] == [1, 2] and sorted(p["alone_test"]) == ["1", "2"]  # JSON keys
        alone_runs = [r for r in confirm_jobs if r.data.tags["config_label"] == p["alone_label"]]
        assert {r.data.tags["seed"] for r in alone_runs} == {"1", "2"}
        assert all(r.data.params["distill.method"] == "ce" and r.data.tags["cost.arch"] == p["arch"] for r in alone_runs)
        assert p["gain_vs_alone"]["n"] == 2 and p["gain_vs_alone"]["low"] is not None
        # its ONNX file: parity checked when written, and it runs
        onnx_path = Path(p["onnx"])
        assert onnx_path.parent == exp_dir / "front" and onnx_path.name.startswith(f"{i}-")
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        assert session.run(None, {"images": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)
        # its MLflow child run and registered version, tagged with cost and accuracy
        run = point_runs[str(i)]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["arch"] == p["arch"] and run.data.metrics["cost/macs"] == p["cost/macs"]
        assert run.data.metrics["test_acc1_mean"] == pytest.approx(p["test_mean"])
        assert f"export/{onnx_path.name}" in {a.path for a in client.list_artifacts(run.info.run_id, "export")}
        version = versions[p["registered_version"]]
        assert version.tags["arch"] == p["arch"] and float(version.tags["cost/macs"]) == p["cost/macs"]
        assert float(version.tags["test_acc1_mean"]) == pytest.approx(p["test_mean"], abs=1e-6)
        assert version.tags["gain_vs_alone_significant"] in ("true", "false") and "gain_vs_alone_interval" in version.tags
        assert parent.data.metrics[f"front/{i}/test_acc1_mean"] == pytest.approx(p["test_mean"])
        assert f"front/{i}/gain_vs_alone_low" in parent.data.metrics and parent.data.tags[f"front.{i}.arch"] == p["arch"]
    assert len({p["registered_version"] for p in points}) == len(points)  # one version per point, none twice
    assert summary["best_params"] in [p["params"] for p in points]  # the chosen (most accurate) point
    assert (exp_dir / "front.png").stat().st_size > 10_000
    assert "front.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "front/teacher/test_acc1" in parent.data.metrics and "front/teacher/cost/macs" in parent.data.metrics


def test_a_torchscript_teachers_reference_row_has_its_size(tmp_path, capsys):
    """A teacher given as TorchScript names no architecture: its params and MACs are measured on the loaded
    module (the ONNX exporter cannot trace a loaded TorchScript module, so its latency is said to be missing)."""
    import torch

    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.models import build_model, describe_model
    from orchestrator.sweep.confirm.front_stage import teacher_row

    cfg = load_config(None, ["data.dataset=digits"])
    data = build_data(cfg.data, 0)
    model = build_model("tiny_teacher", 10, 1).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x).logits

    path = tmp_path / "teacher.pt"
    torch.jit.trace(Logits(), torch.zeros(1, 1, 8, 8)).save(str(path))
    row = teacher_row(str(path), "scripted", 0.9, cfg, data)
    size = describe_model(model, 1, 8)
    assert row["label"] == "teacher scripted" and row["arch"] == "TorchScript"
    assert row["cost/params"] == size["params"] and row["cost/macs"] == size["macs"]
    assert "cost/latency_ms" not in row and "latency of teacher scripted was not measured" in capsys.readouterr().err
