"""A tracking server that goes away: metrics are buffered and sent when it is back (none lost); if it stays
away, the run's end is one clear error naming the steps it could not log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from orchestrator.infra import tracking
ROOT = Path(__file__).resolve().parent.parent


def _store(tmp_path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.check_connection(uri)
    run_id = tracking.start_run(client, tracking.ensure_experiment(client, "outage", uri), "t", "trial")
    return client, run_id


def test_metrics_logged_while_the_server_is_away_are_buffered_then_sent_in_order(tmp_path, sqlite_store, monkeypatch, capsys):
    client, run_id = _store(tmp_path)
    real, down = client.log_batch, [True]

    def log_batch(*args, **kwargs):
        if down[0]:
            raise requests.ConnectionError("Connection refused")
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "log_batch", log_batch)
    start = time.perf_counter()
    for epoch in (1, 2):
        tracking.log_metrics(client, run_id, {"epoch": epoch, "val/acc1": epoch / 10}, step=epoch)
    assert time.perf_counter() - start < 5  # training did not wait for the server
    assert capsys.readouterr().err.count("buffered") == 1  # one warning per run
    assert client.get_metric_history(run_id, "epoch") == []
    down[0] = False
    tracking.log_metrics(client, run_id, {"epoch": 3, "val/acc1": 0.3}, step=3)
    assert [m.step for m in client.get_metric_history(run_id, "val/acc1")] == [1, 2, 3]

    down[0] = True  # away for good: the run's end says which steps are lost
    tracking.log_metrics(client, run_id, {"epoch": 4}, step=4)
    with pytest.raises(tracking.TrackingError, match=r"stayed unreachable for 0 s; run \w+ could not log steps \[4\]"):
        tracking.flush_metrics(client, run_id, wait_s=0)
    tracking.flush_metrics(client, run_id, wait_s=0)  # nothing left buffered


def test_other_errors_are_not_buffered(tmp_path, sqlite_store, monkeypatch):
    client, run_id = _store(tmp_path)
    with pytest.raises(Exception, match="nope"):
        monkeypatch.setattr(client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(ValueError("nope")))
        tracking.log_metrics(client, run_id, {"epoch": 1}, step=1)


# ---------------------------------------------------------------------- a real server stopped mid-sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:port over tmp_path/server.db; returns once /health answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _trial_epochs(store: MlflowClient) -> dict[str, list[int]]:
    """Each trial run's logged epochs, read from the server's SQLite store directly (works while it is down)."""
    exp = store.get_experiment_by_name("outage")
    if exp is None:
        return {}
    runs = store.search_runs([exp.experiment_id], "tags.`orchestrator.kind` = 'trial'")
    return {r.info.run_id: [int(m.step) for m in store.get_metric_history(r.info.run_id, "epoch")] for r in runs}


@pytest.mark.slow
def test_server_stopped_mid_sweep_loses_no_metric(tmp_path):
    """Down for ~5 s plus the restart's 5-10 s: trial epochs take well under a second on digits, so steps are
    logged (buffered) while it is away; MLflow's own retries of run creation and closing cover the rest."""
    from test_sweep import TINY

    port, epochs = _free_port(), 6
    url = f"http://127.0.0.1:{port}"
    store = MlflowClient(f"sqlite:///{tmp_path / 'server.db'}")
    server = _start_server(tmp_path, port)
    args = ["--name", "outage", "--num-samples", "2", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", url,
            *TINY, "sweep.confirm.top_k=0", f"train.epochs={epochs}", "sweep.baseline=false",
            "sweep.max_concurrent=2"]  # both trials at once, so both log through the outage
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILL_CACHE_DIR": str(tmp_path / "cache"),
           "DISTILL_TRACKING_RETRY_S": "300"}
    sweep = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", *args], cwd=tmp_path, env=env,
                             stdout=open(tmp_path / "sweep.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not any(_trial_epochs(store).values()):  # the first trial has logged an epoch: mid-sweep
            assert sweep.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial epoch logged"
            time.sleep(0.5)
        _stop(server)
        during = _trial_epochs(store)
        time.sleep(5)
        server = _start_server(tmp_path, port)  # the same store, the same address
        sweep.wait(timeout=max(60.0, deadline - time.monotonic()))
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
        _stop(server)
    log = (tmp_path / "sweep.log").read_text()
    assert sweep.returncode == 0, log[-3000:]
    final = _trial_epochs(store)
    assert len(final) == 2 and any(len(during.get(run, [])) < len(steps) for run, steps in final.items()), (during, final)
    for run_id, steps in final.items():  # no missing epoch, no duplicate; early stops end with their last epoch
        run = store.get_run(run_id)
        assert steps == list(range(1, len(steps) + 1)), steps
        assert len(steps) == epochs or run.data.tags["orchestrator.outcome"] == "early_stopped"
    exps = [e.experiment_id for e in store.search_experiments()]
    assert not store.search_runs(exps, "attributes.status = 'RUNNING'")  # every run closed
