"""Noise-aware selection: paired intervals, paper-default points, candidates, common random numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config.schema import load_config
from orchestrator.sweep.confirm.outcome import Candidate, alone_for, candidates, decide, jobs
from orchestrator.sweep.leaderboard import TrialSummary
from orchestrator.sweep.search.space import load_space, matching_point, paper_points
from orchestrator.report.stats import mean_sd, paired_gain
from orchestrator.sweep.cli import main
from test_sweep import runs_by_kind, tiny_args

ONE_CONFIG = str(Path(__file__).parent / "data" / "one_config_space.yaml")


def test_paired_interval_matches_hand_computation():
    # d = (0.02, 0.03, 0.01): mean 0.02, sd 0.01, t_{0.975, 2} = 4.302653, half = 4.302653 * 0.01 / sqrt(3) = 0.024841
    gain = paired_gain({1: 0.90, 2: 0.92, 3: 0.91}, {1: 0.88, 2: 0.89, 3: 0.90})
    assert gain.mean == pytest.approx(0.02)
    assert gain.low == pytest.approx(0.02 - 0.0248414, abs=1e-6) and gain.high == pytest.approx(0.02 + 0.0248414, abs=1e-6)
    assert gain.significant is False and "not significant" in gain.text()
    assert json.loads(json.dumps(gain.as_dict()))["significant"] is False  # summary.json keeps a JSON boolean
    # d = (0.05, 0.06, 0.04, 0.05): mean 0.05, sd 0.0081650, t_{0.975, 3} = 3.182446, half = 0.0129917
    gain = paired_gain({1: 0.95, 2: 0.96, 3: 0.94, 4: 0.95, 9: 0.5}, {1: 0.90, 2: 0.90, 3: 0.90, 4: 0.90})
    assert gain.n == 4 and gain.low == pytest.approx(0.0370083, abs=1e-6) and gain.high == pytest.approx(0.0629917, abs=1e-6)
    assert gain.significant and gain.text() == "+5.00 points [+3.70, +6.30], significant"
    assert paired_gain({1: 0.9}, {1: 0.8}).low is None  # one pair: no interval
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="no common seeds"):
        paired_gain({1: 0.9}, {2: 0.8})


SPACE = """params:
  distill.method: {type: categorical, choices: [kd, crd_kd]}
  train.lr: {type: float, low: 0.02, high: 0.3, log: true}
  distill.kd.temperature: {type: float, low: 1.0, high: 10.0, log: true}
  distill.kd.weight: {type: float, low: 0.2, high: 2.0}
  distill.ce.weight: {type: float, low: 0.1, high: 1.0}
  distill.crd.weight: {type: float, low: 0.1, high: 2.0, log: true, when: {distill.method: [crd_kd]}}
  distill.crd.nce_t: {type: float, low: 0.03, high: 0.3, log: true, when: {distill.method: [crd_kd]}}
  distill.crd.nce_k: {type: categorical, choices: [256, 1024, 4096], when: {distill.method: [crd_kd]}}
"""


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return str(path)


def test_paper_points_use_the_paper_values_inside_the_space(space_file):
    cfg = load_config(None, [])
    points = {p.method: p for p in paper_points(load_space(space_file, cfg), cfg)}
    assert set(points) == {"kd", "crd_kd"}
    kd = points["kd"].params
    assert (kd["distill.method"], kd["distill.ce.weight"], kd["distill.kd.weight"], kd["distill.kd.temperature"]) == ("kd", 0.1, 0.9, 4.0)
    assert "distill.crd.nce_k" not in kd  # conditional on crd_kd
    crd_kd = points["crd_kd"]
    assert crd_kd.params["distill.crd.nce_k"] == 4096  # the paper's 16384 is outside the space: nearest choice
    assert crd_kd.deviations == {"distill.crd.nce_k": (16384, 4096)}
    assert matching_point({**kd, "extra": 1}, list(points.values())) is points["kd"]
    assert matching_point({**kd, "distill.kd.weight": 0.91}, list(points.values())) is None


def _summary(number, value, params, outcome="completed"):
    return TrialSummary(number, f"id{number}", outcome, 5, {"val/acc1": value}, params, f"/ckpt/{number}")


def test_candidates_are_top_k_plus_best_paper_default_plus_alone(space_file):
    cfg = load_config(None, [])
    points = paper_points(load_space(space_file, cfg), cfg)
    kd_paper = dict(points[0].params)
    tuned = {**kd_paper, "distill.kd.weight": 1.5}
    summaries = [
        _summary(1, 0.80, kd_paper),
        _summary(2, 0.91, {**tuned, "distill.kd.weight": 1.2}),
        _summary(3, 0.95, {**tuned, "distill.kd.weight": 0.3}, outcome="early_stopped"),  # completed trials rank first
        _summary(4, 0.90, tuned),
        _summary(5, 0.90, tuned),  # the same config twice is measured once
    ]
    cands = candidates(summaries, points, top_k=2, metric="val/acc1", mode="max", baseline=True)
    assert [c.label for c in cands] == ["trial 2", "trial 4", "trial 1 (paper default kd)", "student alone"]
    assert [c.role for c in cands] == ["tuned", "tuned", "paper", "alone"]
    assert cands[-1].overrides == {"train.lr": 0.1, "distill.method": "ce", "distill.ce.weight": 1.0}
    assert all(c.alone is cands[-1] for c in cands[:-1])
    # Different optimiser settings: the student alone has the best-ranked config's; the others wait for the
    # choice (alone_for the chosen config, if it is one of them).
    summaries[1] = _summary(2, 0.91, {**tuned, "distill.kd.weight": 1.2, "train.lr": 0.05})
    cands = candidates(summaries, points, top_k=2, metric="val/acc1", mode="max", baseline=True)
    assert [c.role for c in cands] == ["tuned", "tuned", "paper", "alone"]
    assert cands[3].params == {"train.lr": 0.05} and cands[0].alone is cands[3]
    assert cands[1].alone is None and cands[2].alone is None


def test_jobs_carry_the_space_constants_and_the_alone_stays_ce():
    tuned = Candidate("trial 3", {"train.lr": 0.2, "distill.kd.weight": 1.5}, "tuned", 3)
    alone = alone_for([tuned])
    fixed = {"distill.method": "crd_kd", "distill.crd.nce_k": 1024}
    out = jobs([tuned, alone], [1, 2], fixed)
    assert [(j["label"], j["seed"]) for j in out] == [("trial 3", 1), ("trial 3", 2), ("student alone", 1), ("student alone", 2)]
    assert out[0]["overrides"] == {**fixed, "train.lr": 0.2, "distill.kd.weight": 1.5}  # as the trial had it
    assert out[2]["overrides"]["distill.method"] == "ce" and out[2]["overrides"]["train.lr"] == 0.2


def test_decide_picks_the_best_mean_validation_accuracy():
    a = Candidate("trial 2", {"train.lr": 0.1}, "tuned", 2, val={1: 0.90, 2: 0.90, 3: 0.90}, test={1: 0.88, 2: 0.89, 3: 0.90})
    b = Candidate("trial 7", {"train.lr": 0.1}, "tuned", 7, val={1: 0.95, 2: 0.85, 3: 0.86}, test={1: 0.99, 2: 0.99, 3: 0.99})
    paper = Candidate("trial 1 (paper default kd)", {"train.lr": 0.1}, "paper", 1,
                      val={1: 0.89, 2: 0.89, 3: 0.89}, test={1: 0.87, 2: 0.87, 3: 0.88})
    alone = alone_for([a, b, paper])
    alone.val, alone.test = {1: 0.8, 2: 0.8, 3: 0.8}, {1: 0.86, 2: 0.86, 3: 0.86}
    verdict = decide([a, b, paper, alone], [1, 2, 3], 0.95, confirmed=True)
    assert verdict.chosen is a  # by mean validation (0.900 > 0.887), never by test
    assert verdict.vs_alone.mean == pytest.approx(0.03) and verdict.vs_paper.mean == pytest.approx(0.01666667)
    assert verdict.paper is paper


def test_the_table_names_each_student_alones_settings_and_reads_gains_naturally():
    from orchestrator.sweep.confirm.outcome import conclusion, table

    a = Candidate("trial 2", {"train.lr": 0.1188, "distill.kd.weight": 1.0}, "tuned", 2,
                  val={1: 0.90, 2: 0.91, 3: 0.90}, test={1: 0.89, 2: 0.90, 3: 0.91})
    paper = Candidate("trial 1 (paper default kd)", {"train.lr": 0.1, "distill.kd.weight": 0.9}, "paper", 1,
                      val={1: 0.89, 2: 0.89, 3: 0.89}, test={1: 0.87, 2: 0.87, 3: 0.88})
    alone_a, alone_paper = alone_for([a]), alone_for([paper])  # two student-alone rows, one per lr
    for alone in (alone_a, alone_paper):
        alone.val, alone.test = {1: 0.8, 2: 0.8, 3: 0.8}, {1: 0.86, 2: 0.87, 3: 0.87}
    verdict = decide([a, paper, alone_a, alone_paper], [1, 2, 3], 0.95, confirmed=True)
    text = table(verdict, "tiny_teacher", 0.95)
    assert "student alone (lr 0.1188)" in text and "student alone (lr 0.1)" in text
    rows = [line for line in text.splitlines() if "student alone (" in line]
    assert len(rows) == 2 and len(set(rows)) == 2
    assert "points [" in text and "significant points" not in text
    said = conclusion(verdict)
    assert "beats the student alone (lr 0.1188) by +3.33 points [" in said and "significant." in said
    assert "points points" not in said and not said.splitlines()[0].endswith("points.")


def test_summary_names_the_student_alone_the_chosen_configs_gain_is_paired_with():
    """Two students alone (the best-ranked config's lr and, trained after the choice, the chosen one's):
    summary.json points at the chosen config's by its index among the candidates."""
    first = Candidate("trial 8", {"train.lr": 0.28}, "tuned", 8, val={1: 0.85, 2: 0.85}, test={1: 0.86, 2: 0.86})
    chosen = Candidate("trial 1 (paper default kd)", {"train.lr": 0.1}, "paper", 1,
                       val={1: 0.88, 2: 0.88}, test={1: 0.87, 2: 0.88})
    alones = [alone_for([first]), alone_for([chosen])]
    for alone, acc in zip(alones, (0.87, 0.86)):
        alone.val, alone.test = {1: acc, 2: acc}, {1: acc, 2: acc}
    summary = json.loads(json.dumps(decide([first, chosen, *alones], [1, 2], 0.95, confirmed=True).as_dict()))
    assert summary["chosen"] == "trial 1 (paper default kd)" and summary["chosen_alone"] == 3
    assert summary["candidates"][3]["params"] == {"train.lr": 0.1}
    assert summary["gain_vs_alone"]["mean"] == pytest.approx(0.015)


def _histories(uri: str, key: str = "val/acc1") -> list[list[float]]:
    client = MlflowClient(uri)
    return [[m.value for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)]
            for r in runs_by_kind(uri)["trial"]]


@pytest.mark.slow
def test_common_random_numbers_make_identical_configs_identical_and_top_k_0_is_unconfirmed(
        ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    """Two trials of one config (the first the paper-default point) report identical metrics; with
    sweep.confirm.top_k=0 the student alone is trained on the search seeds and the result says UNCONFIRMED."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, f"sweep.search_space={ONE_CONFIG}", "sweep.confirm.top_k=0", "sweep.seeds=[3,4]",
                     "sweep.asha.grace_period=2", samples=2)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "UNCONFIRMED" in out and "Selected and measured on the same seeds" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = _histories(uri)
    assert len(first) == 2 and first == second  # same seeds, same config: identical, epoch by epoch
    for seed in (3, 4):  # each seed's history is logged too
        a, b = _histories(uri, f"seed{seed}/val/acc1")
        assert a == b and len(a) == 2
    assert first[-1] == pytest.approx((_histories(uri, "seed3/val/acc1")[0][-1] + _histories(uri, "seed4/val/acc1")[0][-1]) / 2)
    kinds = runs_by_kind(uri)
    (stage,) = [r for r in kinds["stage"] if r.data.tags["stage"] == "baseline"]
    alone = [r for r in kinds["confirm"] if r.data.tags["mlflow.parentRunId"] == stage.info.run_id]
    assert sorted(r.data.tags["seed"] for r in alone) == ["3", "4"]  # the search seeds, paired with the trial's
    summary = json.loads(next((tmp_path / "runs").glob("tiny-*/summary.json")).read_text())
    assert summary["confirmed"] is False and summary["seeds"] == [3, 4]
    assert math.isfinite(summary["gain_vs_alone"]["mean"]) and summary["gain_vs_alone"]["n"] == 2
    alone = summary["candidates"][summary["chosen_alone"]]  # the student alone the gain is paired with
    assert alone["role"] == "alone" and alone["seeds"] == [3, 4]
    assert "confirm" not in {r.data.tags.get("stage") for r in kinds["stage"]}
