"""The compression search's side: a multi-objective sweep on digits through the real path (Tune, Optuna, Ray
Train), the budget checked up front (exit 2), over-budget trials never trained, and what --dry-run shows."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

from orchestrator.config.schema import load_config
from orchestrator.models import build_model, describe_model
from orchestrator.sweep.cli import main
from orchestrator.sweep.folder import optuna_storage
from orchestrator.config.objectives import OVER_BUDGET
from orchestrator.sweep.search.search_stage import PaperDefaultsFinish
from orchestrator.sweep.trial import TrialContext, over_budget_result
from test_sweep import tiny_args

MULTI = str(Path(__file__).parent / "data" / "tiny_multi_space.yaml")


def _args(tmp_path: Path, *extra: str, samples: int = 4) -> list[str]:
    """The tiny sweep's arguments with train.epochs left to the space (given, it would be held)."""
    return [a for a in tiny_args(tmp_path, f"sweep.search_space={MULTI}", *extra, samples=samples)
            if a != "train.epochs=2"]


def _macs(width: float, depth: int) -> int:
    return describe_model(build_model("tiny_student", 10, 1, width=width, depth=depth), 1, 8)["macs"]


@pytest.mark.slow
def test_multi_objective_sweep_on_digits(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _args(tmp_path, "sweep.paper_defaults=false", "sweep.confirm.top_k=0", "sweep.baseline=false",
                 "sweep.objectives=[val/acc1:max,cost/macs:min]")  # the search is what is tested: no other runs
    assert main(args) == 0
    out = capsys.readouterr().out
    exp_dir = next((tmp_path / "runs").glob("tiny-*"))
    # Optuna's study has both directions; each finished trial was told (accuracy, its student's MACs).
    study = optuna.load_study(study_name=exp_dir.name, storage=optuna_storage(exp_dir, fresh=False))
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == 4
    for t in told:
        assert len(t.values) == 2 and t.values[1] == _macs(t.params["model.student_width"], t.params["model.student_depth"])
    # Every result Tune saw carried the student's cost; each trial trained its own epochs.
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    assert {"cost/macs", "train.epochs", "epochs"} <= set(board.columns)
    for result_file in exp_dir.glob("run_trial_*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        assert rows and all("cost/macs" in r and "cost/latency_ms" in r for r in rows)
        epochs = rows[-1]["config"]["train.epochs"]
        assert rows[-1]["epoch"] <= epochs
    completed = board[board["outcome"] == "completed"]
    assert (completed["epochs"] == completed["train.epochs"]).all() and len(completed) >= 1
    assert set(board["train.epochs"]) <= {2, 3}


def test_a_budget_no_student_meets_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    smallest = _macs(0.5, 1)
    code = main(_args(tmp_path, f"sweep.budget=macs <= {smallest - 1}"))
    err = capsys.readouterr().err
    assert code == 2
    assert "config key 'sweep.budget'" in err and "no student fits cost/macs" in err
    assert f"tiny_student[width=0.5], has cost/macs = {smallest}" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_shows_objectives_budget_students_and_what_is_confirmed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = _args(tmp_path)
    assert main(["--dry-run", *base, "sweep.objectives=[val/acc1:max,macs:min]", "sweep.confirm.top_k=3"]) == 0
    out = capsys.readouterr().out
    assert "search objectives: val/acc1 (max), cost/macs (min)" in out
    assert "Optuna multi-objective TPE" in out and "Pareto rank" in out
    assert "confirmation: the Pareto front of the completed trials over val/acc1, cost/macs, at most 3 points" in out
    assert "its sampled train.epochs (2, 3;" in out
    assert f"tiny_student[width=0.5]" in out and f"{_macs(0.5, 1) / 1e6:.3f} M MACs" in out
    limit = _macs(0.5, 2)
    assert main(["--dry-run", *base, f"sweep.budget=macs <= {limit}"]) == 0
    out = capsys.readouterr().out
    assert f"budget: cost/macs <= {limit}: the most accurate student within it" in out
    assert "confirmation: the most accurate completed trial within cost/macs" in out
    assert f"within cost/macs <= {limit}" in out and "over budget (cost/macs = " in out
    assert "search objective: val/acc1 (max)" in out and "ASHA on val/acc1 (max)" in out


def test_an_over_budget_trial_reports_once_and_no_scheduler_ranks_it():
    cfg = load_config(None, ["data.dataset=digits", "model.student=tiny_student", "sweep.budget=macs <= 1000"])
    costs = {"tiny_student": {"arch": "tiny_student", "params": 10, "macs": 5000, "latency_ms_b1": 0.01,
                              "latency_ms_b64": 0.001}}
    ctx = TrialContext(base={}, teachers=[], teacher_outputs=[], storage_path="/x", tracking_uri="", experiment_id="",
                       parent_run_id="", costs=costs, data_shape=[10, 1, 8])
    result = over_budget_result(cfg, ctx)
    assert result[OVER_BUDGET] == 1.0 and result["cost/macs"] == 5000 and result["val/acc1"] == float("-inf")
    fits = load_config(None, ["data.dataset=digits", "model.student=tiny_student", "sweep.budget=macs <= 5000"])
    assert over_budget_result(fits, ctx) is None
    scheduler = PaperDefaultsFinish([], metric="val/acc1", mode="max", max_t=5, grace_period=1, reduction_factor=2)

    class Trial:
        trial_id, config = "t", {}

    scheduler.on_trial_add(None, Trial())
    assert scheduler.on_trial_result(None, Trial(), {**result, "training_iteration": 1}) == TrialScheduler.CONTINUE
    scheduler.on_trial_complete(None, Trial(), {**result, "training_iteration": 1})
    assert all(not recorded for _, recorded in scheduler._brackets[0]._rungs)  # nothing recorded at any rung


@pytest.mark.slow
def test_budget_sweep_never_trains_a_student_over_it(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    limit = _macs(2.0, 1)  # only width 2.0 at depth 2 is over it
    assert _macs(0.5, 2) <= limit < _macs(2.0, 2)
    assert main(_args(tmp_path, "sweep.paper_defaults=false", "sweep.confirm.top_k=0", "sweep.baseline=false",
                      f"sweep.budget=macs <= {limit}", "--max-concurrent", "1", samples=5)) == 0
    # one at a time: the same configs every run; the search is what is tested: no student-alone run
    out = capsys.readouterr().out
    exp_dir = next((tmp_path / "runs").glob("tiny-*"))
    board = pd.read_csv(exp_dir / "leaderboard.csv")
    over, within = board[board["cost/macs"] > limit], board[board["cost/macs"] <= limit]
    assert len(over) >= 1 and (over["outcome"] == "over_budget").all() and over["val/acc1"].isna().all()
    assert "over sweep.budget: not trained" in out
    assert len(within) >= 1 and within["outcome"].isin(["completed", "early_stopped"]).all()
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["cost/macs"] <= limit
    from test_sweep import runs_by_kind

    trials = runs_by_kind(f"sqlite:///{tmp_path / 'mlflow.db'}")["trial"]
    assert len(trials) == len(within)  # an over-budget trial opens no run: nothing was trained


def test_the_compress_space_samples_epochs_methods_and_a_20x_span():
    from orchestrator.sweep.search.space import load_space
    from orchestrator.sweep.costs import reachable_students

    cfg = load_config(None, ["sweep.search_space=compress"])
    space = load_space("compress", cfg)
    params = {p.key: p for p in space.params}
    assert params["train.epochs"].type == "categorical" and len(params["train.epochs"].choices) >= 2
    assert {"kd", "crd_kd", "dkd", "dist"} <= set(params["distill.method"].choices)
    archs, continuous = reachable_students(space, cfg)
    macs = [describe_model(build_model(a, 10, 1), 1, 28)["macs"] for a in archs]
    assert not continuous and max(macs) / min(macs) >= 20


def test_the_compress_space_sizes_its_run_unless_the_user_does(tmp_path):
    """compress.yaml's ``defaults:`` (name, trials, confirmed points and seeds) and ``objectives:`` apply unless
    given; a key a space may not set is a ConfigError naming it."""
    from orchestrator.config.schema import ConfigError
    from orchestrator.sweep.cli import build_parser, resolve_config

    def resolved(*argv: str):
        return resolve_config(build_parser().parse_intermixed_args(["sweep.search_space=compress", *argv]))

    cfg = resolved()
    assert (cfg.name, cfg.sweep.num_samples, cfg.sweep.confirm.top_k, cfg.sweep.confirm.seeds) == (
        "fmnist-compress", 12, 3, 3)
    assert cfg.sweep.objectives == ["val/acc1:max", "cost/latency_ms:min"]
    cfg = resolved("--name", "mine", "--num-samples", "5", "sweep.confirm.seeds=4")
    assert (cfg.name, cfg.sweep.num_samples, cfg.sweep.confirm.top_k, cfg.sweep.confirm.seeds) == ("mine", 5, 3, 4)
    assert load_config(None, ["sweep.search_space=kd"]).name == "fmnist-crd-kd"  # a space without defaults
    space = tmp_path / "space.yaml"
    space.write_text("defaults: {train.epochs: 3}\nparams:\n  train.lr: {type: float, low: 0.01, high: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        resolved(f"sweep.search_space={space}")
    assert info.value.key == "space.yaml:defaults.train.epochs" and "sweep.num_samples" in str(info.value)
