"""``python -m orchestrator.compare`` / ``orchestrator.report``: leaderboard, plots, cross-sweep comparison.

Fast tests write fake sweeps in exactly the sweep's MLflow layout into a SQLite store under tmp_path;
the slow acceptance test runs a tiny real sweep against a real ``mlflow server`` on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from orchestrator.infra import tracking
from orchestrator.compare import main
from orchestrator.report.write import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_sweep(client: MlflowClient, uri: str, name: str, trials: list[dict], space: str = "crd_kd",
               result: dict | None = None) -> dict:
    """A sweep as runner/trial/train_loop log it; ``trials``: dicts with ``sampled``, ``curve``, ``outcome``;
    ``result``: the confirmed result (metrics and tags) its parent run gets, as sweep/summary.py logs them.

    Returns {"parent": id, "children": [ids in the order given]}.
    """
    exp = tracking.ensure_experiment(client, name, uri)
    parent = tracking.start_run(
        client, exp, f"{name}-20250101-000000", "sweep",
        params={"name": name, "train.epochs": 3, "distill.method": "kd", "distill.kd.temperature": 4.0},
        tags={"search_space": space},
    )
    children = []
    for number, t in enumerate(trials):
        run = tracking.start_run(
            client, exp, f"trial-{number:03d}", "trial", parent_id=parent,
            tags={"trial_id": f"abc12_{number:05d}", "trial_number": str(number)},
        )
        tracking.log_params(client, run, {"train.epochs": 3, "seed": number,
                                          **{f"sampled.{k}": v for k, v in t["sampled"].items()}})
        for epoch, acc in enumerate(t["curve"], start=1):
            tracking.log_metrics(client, run, {
                "val/acc1": acc, "val/acc5": min(1.0, acc + 0.1), "val/loss": 2 - acc, "train/loss": 2.5 - acc,
                "train/loss_ce": 1.0, "train/loss_kd": 1.5 - acc, "time/epoch_s": 0.1,
                "throughput/train_img_s": 1000.0, "epoch": epoch, "lr": 0.1,
            }, step=epoch)
        tracking.set_tags(client, run, {tracking.OUTCOME: t.get("outcome", "completed")})
        client.set_terminated(run, "FAILED" if t.get("outcome") == "failed" else "FINISHED")
        children.append(run)
    best = max(range(len(trials)), key=lambda i: max(trials[i]["curve"], default=-1))
    tracking.log_metrics(client, children[best], {"test/acc1": max(trials[best]["curve"]) - 0.01}, step=3)
    tracking.set_tags(client, children[best], {"orchestrator.best": "true"})
    tracking.log_metrics(client, parent, {
        "test/acc1": max(trials[best]["curve"]) - 0.01, "best/val/acc1": max(trials[best]["curve"]),
        "teacher/test_acc1": 0.95, "student_alone/test_acc1": 0.80, **(result or {}).get("metrics", {}),
    }, step=0)
    if result:
        tracking.set_tags(client, parent, result["tags"])
    client.set_terminated(parent, "FINISHED")
    return {"parent": parent, "children": children, "experiment_id": exp}


# Trial 2 has the best val/acc1 over its history (0.93 at epoch 2) but not the best last value.
CRD_KD_TRIALS = [
    {"sampled": {"distill.method": "kd", "distill.kd.temperature": 2.0, "train.lr": 0.05}, "curve": [0.5, 0.7, 0.8]},
    {"sampled": {"distill.method": "crd_kd", "distill.kd.temperature": 4.0, "train.lr": 0.1,
                 "distill.crd.nce_k": 256}, "curve": [0.6, 0.75, 0.85]},
    {"sampled": {"distill.method": "crd_kd", "distill.kd.temperature": 8.0, "train.lr": 0.2,
                 "distill.crd.nce_k": 1024}, "curve": [0.7, 0.93, 0.9]},
    {"sampled": {"distill.method": "kd", "distill.kd.temperature": 1.5, "train.lr": 0.02}, "curve": [0.4],
     "outcome": "early_stopped"},
    {"sampled": {"distill.method": "kd", "distill.kd.temperature": 6.0, "train.lr": 0.3}, "curve": [],
     "outcome": "failed"},
]
# The confirmation chose trial 1, not the best single search trial 2 (as real sweeps do when trial 2 was lucky).
CRD_KD_RESULT = {
    "metrics": {"confirm/chosen/test_acc1_mean": 0.9123, "confirm/chosen/test_acc1_sd": 0.0042,
                "confirm/gain_vs_alone": 0.0167, "confirm/gain_vs_alone_low": 0.0070, "confirm/gain_vs_alone_high": 0.0263,
                "confirm/gain_vs_paper_default": 0.004, "confirm/gain_vs_paper_default_low": -0.002,
                "confirm/gain_vs_paper_default_high": 0.010, "test/acc1_mean": 0.9123, "test/acc1_sd": 0.0042},
    "tags": {"confirm.chosen": "trial 1", "confirm.chosen_trial": "1", "confirm.confirmed": "true",
             "confirm.chosen_params": '{"distill.method": "crd_kd", "distill.kd.temperature": 4.0, "train.lr": 0.1, '
                                      '"distill.crd.nce_k": 256}',
             "confirm.seeds": "[3, 4, 5, 6]", "confirm.level": "0.95", "confirm.alone": "student alone (lr 0.1)",
             "confirm.paper_default": "trial 0 (paper default kd)"},
}
KD_TRIALS = [
    {"sampled": {"distill.kd.temperature": t, "distill.kd.weight": a}, "curve": c}
    for t, a, c in [(2.0, 0.5, [0.6, 0.8]), (4.0, 0.9, [0.7, 0.82]), (9.0, 0.3, [0.5, 0.6])]
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return {
        "uri": uri, "client": client, "root": root,
        "crd_kd": fake_sweep(client, uri, "crd-kd-sweep", CRD_KD_TRIALS, result=CRD_KD_RESULT),
        "kd": fake_sweep(client, uri, "kd-sweep", KD_TRIALS, space="kd"),
    }


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = imread(path)
    assert image.shape[0] > 50 and image.shape[1] > 50


def test_one_sweep_by_experiment(store, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--experiment", "crd-kd-sweep", "--tracking-uri", store["uri"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Leaderboard" in printed and "trial-002" in printed

    board = pd.read_csv(out / "leaderboard.csv", index_col="rank")
    assert len(board) == 5
    top = board.iloc[0]
    assert top["run_id"] == store["crd_kd"]["children"][2]
    assert top["best val/acc1"] == pytest.approx(0.93) and top["last val/acc1"] == pytest.approx(0.9)
    assert top["best_epoch"] == 2 and top["epochs"] == 3 and top["test/acc1"] == pytest.approx(0.92)
    assert list(board["run_name"][:3]) == ["trial-002", "trial-001", "trial-000"]
    assert board.set_index("run_name").loc["trial-003", "outcome"] == "early_stopped"
    failed = board.set_index("run_name").loc["trial-004"]
    assert failed["outcome"] == "failed" and pd.isna(failed["best val/acc1"]) and board.index[-1] == 5
    # sampled params, categorical kept as strings, conditional ones missing where not sampled
    assert {"distill.method", "distill.kd.temperature", "train.lr", "distill.crd.nce_k"} <= set(board.columns)
    assert set(board["distill.method"]) == {"kd", "crd_kd"}
    assert board["distill.crd.nce_k"].isna().sum() == 3

    for name in ["param_distill.method.png", "param_distill.kd.temperature.png", "param_train.lr.png",
                 "param_distill.crd.nce_k.png", "learning_curves.png", "optimisation_history.png",
                 "param_importance.png"]:
        assert_png(out / name)
    assert not (out / "sweeps.png").exists()
    html = (out / "leaderboard.html").read_text()
    assert "trial-002" in html and html.count("data:image/png;base64,") == 7
    sweeps = pd.read_csv(out / "sweeps.csv", index_col="rank")
    row = sweeps.iloc[0]
    assert row["sweep"] == "crd-kd-sweep" and row["trials"] == 5 and row["completed"] == 3
    assert row["failed"] == 1 and row["best_search_trial"] == "trial-002"
    # the confirmed result, not the best single trial: the chosen config's mean over seeds and its paired gains
    assert row["chosen"] == "trial 1" and row["confirmed"] and row["seeds"] == 4
    assert row["test/acc1_mean"] == pytest.approx(0.9123) and row["test/acc1_sd"] == pytest.approx(0.0042)
    assert (row["gain_vs_alone"], row["gain_vs_alone_low"], row["gain_vs_alone_high"]) == pytest.approx(
        (0.0167, 0.0070, 0.0263))
    assert row["gain_vs_paper_default_low"] == pytest.approx(-0.002)
    assert row["teacher/test_acc1"] == pytest.approx(0.95) and row["student_alone/test_acc1"] == pytest.approx(0.80)
    result = printed[printed.index("== crd-kd-sweep: result =="):]
    assert "chosen config: trial 1 (re-trained on fresh seeds [3, 4, 5, 6]" in result
    assert "distill.method=crd_kd  distill.kd.temperature=4.0  train.lr=0.1  distill.crd.nce_k=256" in result
    assert "test acc1: 91.23 ± 0.42 % (mean ± sd over 4 seeds)" in result
    assert "gain over student alone (lr 0.1): +1.67 points [+0.70, +2.63], significant" in result
    assert "gain over the best paper default (trial 0 (paper default kd)): +0.40 points [-0.20, +1.00], " \
           "not significant" in result
    assert "best single search trial: trial-002, best val/acc1 0.93 (one trial on the search seeds" in result
    assert "chosen config: trial 1" in html


def test_a_sweep_without_a_confirmed_result_says_so_and_shows_no_gain(store, tmp_path, capsys):
    """A parent run without confirm/* metrics (unfinished, or older than the confirmation stage): no gain is made
    up from a single trial and a mean."""
    assert main(["--experiment", "kd-sweep", "--tracking-uri", store["uri"], "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "no confirmed result in its parent run" in printed
    assert "best single search trial: trial-001" in printed
    row = pd.read_csv(tmp_path / "r" / "sweeps.csv", index_col="rank").iloc[0]
    assert pd.isna(row["test/acc1_mean"]) and pd.isna(row["gain_vs_alone"]) and pd.isna(row["chosen"])


def test_an_unconfirmed_sweep_is_labelled_unconfirmed(tmp_path, sqlite_store, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tags = {**CRD_KD_RESULT["tags"], "confirm.confirmed": "false", "confirm.seeds": "[0]"}
    metrics = {k: v for k, v in CRD_KD_RESULT["metrics"].items() if not k.endswith(("_low", "_high"))}
    fake_sweep(MlflowClient(uri), uri, "top0", KD_TRIALS, result={"metrics": metrics, "tags": tags})
    assert main(["--experiment", "top0", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "UNCONFIRMED: measured on the search's own seeds [0]" in printed
    assert "gain over student alone (lr 0.1): +1.67 points (one seed: no interval)" in printed


def test_two_sweeps_side_by_side(store, tmp_path):
    out = tmp_path / "both"
    argv = ["--experiment", "kd-sweep", "crd-kd-sweep", "--tracking-uri", store["uri"], "--out", str(out)]
    assert main(argv) == 0
    sweeps = pd.read_csv(out / "sweeps.csv", index_col="rank")
    assert list(sweeps["sweep"]) == ["crd-kd-sweep", "kd-sweep"]  # best first
    assert sweeps.iloc[1]["best val/acc1"] == pytest.approx(0.82)
    assert_png(out / "sweeps.png")
    assert_png(out / "param_distill.kd.weight.png")  # a parameter only the KD sweep searched
    board = pd.read_csv(out / "leaderboard.csv", index_col="rank")
    assert len(board) == 8 and board.iloc[0]["sweep"] == "crd-kd-sweep"
    assert board.iloc[1]["sweep"] == "crd-kd-sweep" and board.iloc[2]["sweep"] == "kd-sweep"


def test_by_run_id_and_logged_to_parent(store, tmp_path):
    parent = store["kd"]["parent"]
    report = write_report(store["uri"], [parent], tmp_path / "r", log_to=parent)
    assert report.leaderboard.iloc[0]["run_name"] == "trial-001"
    assert report.leaderboard.iloc[0]["sweep"] == "kd-sweep"
    assert report.plots["param_importance"].is_file()
    logged = {f.path for f in store["client"].list_artifacts(parent, "report")}
    assert {"report/leaderboard.csv", "report/leaderboard.html", "report/param_importance.png"} <= logged
    # the default output folder is ./reports/<run id>
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["--run", parent, "--tracking-uri", store["uri"]]) == 0
    finally:
        os.chdir(cwd)
    assert (tmp_path / "reports" / parent / "leaderboard.csv").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--experiment", "no-such-sweep"], "no MLflow experiment named 'no-such-sweep'"),
        (["--run", "0123456789abcdef0123456789abcdef"], "no MLflow run with id '0123456789abcdef0123456789abcdef'"),
        (["--run", "not-a-run"], "no MLflow run with id 'not-a-run'"),
    ],
)
def test_unknown_experiment_or_run(store, tmp_path, capsys, argv, message):
    assert main([*argv, "--tracking-uri", store["uri"], "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_trial_run_id_is_refused_with_its_parent_named(store, tmp_path, capsys):
    child = store["kd"]["children"][0]
    assert main(["--run", child, "--tracking-uri", store["uri"], "--out", str(tmp_path / "x")]) == 2
    assert store["kd"]["parent"] in capsys.readouterr().err


def test_unreachable_server_and_missing_store(tmp_path, capsys):
    start = time.perf_counter()
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["--experiment", "x", "--tracking-uri", url, "--out", str(tmp_path / "x")]) == 2
    assert time.perf_counter() - start < 20
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the MLflow tracking store at {url}") and len(err.splitlines()) == 1
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert not missing.exists()


# ---------------------------------------------------------------------- acceptance: real server, real sweep


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, served artifacts); yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_compare_after_real_sweep_on_real_server(mlflow_server, ray_session, tmp_path, monkeypatch, capsys):
    from orchestrator.sweep import cli as sweep
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # crd_kd's shape (categorical method, conditional CRD knobs) with K small enough for digits (1294 images)
    space = tmp_path / "tiny_crd_kd.yaml"
    space.write_text(
        "description: tiny KD or CRD+KD for tests\n"
        "params:\n"
        "  distill.method: {type: categorical, choices: [kd, crd_kd]}\n"
        "  train.lr: {type: float, low: 0.02, high: 0.3, log: true}\n"
        "  distill.kd.temperature: {type: float, low: 1.0, high: 10.0, log: true}\n"
        "  distill.crd.nce_k: {type: categorical, choices: [64, 256], when: {distill.method: [crd_kd]}}\n"
    )
    rc = sweep.main([
        "--tracking-uri", mlflow_server, "--storage-path", str(tmp_path / "runs"), "--num-samples", "4",
        "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "train.epochs=2",
        "teacher.epochs=3", "distill.crd.nce_k=256", f"sweep.search_space={space}", "sweep.max_concurrent=1",
        "data.batch_size=64", "sweep.confirm.top_k=1", "sweep.confirm.seeds=2",
    ])
    assert rc == 0

    client = MlflowClient(tracking_uri=mlflow_server)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.`orchestrator.kind` = 'sweep'"
    )
    assert len(parents) == 1
    parent = parents[0]
    experiment = client.get_experiment(parent.info.experiment_id).name
    children = [r for r in tracking.child_runs(client, parent.info.experiment_id, parent.info.run_id)
                if r.data.tags.get(tracking.KIND) == "trial"]  # the confirm stage is a child of its own kind
    best_val = {
        r.info.run_id: max((m.value for m in client.get_metric_history(r.info.run_id, "val/acc1")), default=-1.0)
        for r in children
    }
    best_run = max(best_val, key=best_val.get)

    for argv in (["--experiment", experiment], ["--run", parent.info.run_id]):
        out = tmp_path / f"report-{argv[0][2:]}"
        assert main([*argv, "--tracking-uri", mlflow_server, "--out", str(out)]) == 0
        board = pd.read_csv(out / "leaderboard.csv", index_col="rank")
        assert len(board) == len(children) == 4
        assert board.iloc[0]["best val/acc1"] == pytest.approx(best_val[best_run])
        assert best_val[board.iloc[0]["run_id"]] == pytest.approx(best_val[best_run])  # ties: any best trial
        assert (out / "leaderboard.html").stat().st_size > 0 and (out / "sweeps.csv").is_file()
        pngs = sorted(out.glob("*.png"))
        names = {p.name for p in pngs}
        assert {"learning_curves.png", "optimisation_history.png", "param_importance.png",
                "param_distill.method.png", "param_distill.kd.temperature.png"} <= names
        for png in pngs:
            assert_png(png)

    # compare tells the sweep's confirmed story: its chosen config, mean ± sd and paired gains are summary.json's
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    capsys.readouterr()
    assert main(["--run", parent.info.run_id, "--tracking-uri", mlflow_server, "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    row = pd.read_csv(tmp_path / "again" / "sweeps.csv", index_col="rank").iloc[0]
    assert summary["confirmed"] is True and row["confirmed"] and row["chosen"] == summary["chosen"]
    assert row["seeds"] == len(summary["seeds"]) == 2
    assert (row["test/acc1_mean"], row["test/acc1_sd"]) == pytest.approx((summary["test/acc1_mean"], summary["test/acc1_sd"]))
    for key in ("gain_vs_alone", "gain_vs_paper_default"):
        gain = summary[key]
        if gain is None:
            assert pd.isna(row[key])
        else:
            assert (row[key], row[f"{key}_low"], row[f"{key}_high"]) == pytest.approx((gain["mean"], gain["low"], gain["high"]))
    assert summary["gain_vs_alone"] is not None
    result = printed[printed.index("result ==\n"):]
    assert f"chosen config: {summary['chosen']} (re-trained on fresh seeds {summary['seeds']}" in result
    assert "  ".join(f"{k}={v}" for k, v in summary["best_params"].items()) in result
    assert f"test acc1: {100 * summary['test/acc1_mean']:.2f} ± {100 * summary['test/acc1_sd']:.2f} %" in result
    assert "best single search trial: trial-" in result and "one trial on the search seeds" in result
    assert ("the chosen config is the paper default itself" in result) == (summary["paper_default"] == summary["chosen"])


def test_plots_stay_readable_with_the_zoo_s_many_methods_and_a_long_importance_note(tmp_path):
    """The zoo space's ~22 method names get slanted ticks, and an importance note naming ~20 left-out knobs
    wraps: matplotlib's constrained layout used to collapse on it (a UserWarning, labels cut off)."""
    import warnings

    from orchestrator.report.plots import _figure, category_ticks, plot_importance

    ax = _figure().add_subplot()
    category_ticks(ax, [f"method{i}" for i in range(22)])
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {45.0}
    category_ticks(ax, ["kd", "crd"])
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {0.0}
    note = "PED-ANOVA on 24 finished trials; a single value among the trials that drew it, left out: " + ", ".join(
        f"distill.method{i}.weight" for i in range(20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_png(plot_importance([("zoo", {"train.lr": 0.9, "distill.kd.temperature": 0.1}, note)],
                                   tmp_path / "importance.png"))
