"""The main job end to end on tiny data: real Ray Tune, Ray Train, Optuna and MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep.cli import build_parser, main
from run_checks import assert_every_run_closed
from test_compare import mlflow_server  # noqa: F401 - a fixture: a real `mlflow server` on loopback

SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")
TINY = [
    "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
    "teacher.epochs=4", "teacher.lr=0.1", "train.epochs=2", f"sweep.search_space={SPACE}",
    "sweep.confirm.top_k=1", "sweep.confirm.seeds=2",
    # One trial at a time: each trial run (search, confirmation) then starts one Tune actor, reused (~6 s of CPU per
    # actor, mostly imports). The tests about trials at once say sweep.max_concurrent=2 (a later override wins).
    "sweep.max_concurrent=1",
]


def tiny_args(tmp_path: Path, *extra: str, samples: int = 4) -> list[str]:
    return [
        "--name", "tiny", "--num-samples", str(samples), "--storage-path", str(tmp_path / "runs"),
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *TINY, *extra,
    ]


def runs_by_kind(uri: str, experiment: str = "tiny") -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    kinds: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        kinds.setdefault(run.data.tags.get("orchestrator.kind"), []).append(run)
    return kinds


def assert_sweep_logged(uri: str, trials: int) -> None:
    client = MlflowClient(uri)
    kinds = runs_by_kind(uri)
    (parent,) = kinds["sweep"]
    assert parent.info.status == "FINISHED" and parent.data.tags["orchestrator.outcome"] == "completed"
    # Closed by its scope, after the report (the last artifact), not when the model was registered.
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert_every_run_closed(uri)
    children = kinds["trial"]
    assert len(children) == trials
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED", (child.info.run_name, child.data.tags.get("orchestrator.error"))
        history = client.get_metric_history(child.info.run_id, "val/acc1")
        assert history and [m.step for m in history] == list(range(1, len(history) + 1))
        assert "distill.kd.temperature" in child.data.params
    assert "test/acc1" in parent.data.metrics and "student_alone/test_acc1" in parent.data.metrics
    assert {"confirm/gain_vs_alone", "confirm/gain_vs_alone_low", "test/acc1_mean"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "leaderboard.csv", "tiny_space.yaml", "summary.json", "confirm.png"} <= artifacts
    versions = client.search_model_versions("name='distill-student'")
    assert versions and versions[0].run_id == parent.info.run_id
    assert {"test_acc1_mean", "test_acc1_sd", "gain_vs_alone", "gain_vs_alone_interval"} <= set(versions[0].tags)
    for exp in client.search_experiments():
        running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        assert not running, [r.info.run_name for r in running]


@pytest.mark.slow
def test_tiny_sweep_end_to_end(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(tiny_args(tmp_path, "sweep.max_concurrent=2")) == 0
    out = capsys.readouterr().out
    assert "Leaderboard" in out and "mlflow ui --backend-store-uri" in out and "student alone" in out
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert_sweep_logged(uri, trials=4)
    teachers = runs_by_kind(uri, "distill-teachers")["teacher"]
    assert len(teachers) == 1 and teachers[0].info.status == "FINISHED"

    # The paper defaults are the first trials, marked on the leaderboard.
    exp_dir = next((tmp_path / "runs").glob("tiny-*"))
    board = pd.read_csv(exp_dir / "leaderboard.csv").set_index("trial")
    assert board.loc[1, "paper_default"] == "kd" and board.loc[2, "paper_default"] == "crd_kd"
    assert board.loc[1, "distill.kd.temperature"] == 4.0 and board.loc[2, "distill.crd.nce_t"] == 0.07
    # Tune's per-trial logs: result.json only (the leaderboard's rows), re-uploaded at every state save.
    logs = {p.name for trial in exp_dir.glob("run_trial_*") for p in trial.iterdir() if p.is_file()}
    assert logs == {"result.json"}, logs
    # Confirmation: one FINISHED run per (config, seed) under the confirm stage, fresh seeds only.
    summary = json.loads((exp_dir / "summary.json").read_text())
    kinds = runs_by_kind(uri)
    stages = {r.data.tags["stage"]: r for r in kinds["stage"]}
    assert {"confirm"} <= set(stages) and all(r.info.status == "FINISHED" for r in stages.values())
    jobs = [r for r in kinds["confirm"] if r.data.tags["mlflow.parentRunId"] in {s.info.run_id for s in stages.values()}]
    labels = {c["label"] for c in summary["candidates"]}
    assert len(jobs) == 2 * len(labels) and {r.data.tags["config_label"] for r in jobs} == labels
    assert {r.data.tags["seed"] for r in jobs} == {"1", "2"} and all("test/acc1" in r.data.metrics for r in jobs)
    assert summary["confirmed"] is True and summary["chosen"] in labels and "student alone" in labels
    assert summary["best_params"] == next(c["params"] for c in summary["candidates"] if c["label"] == summary["chosen"])
    assert "Result: re-trained on fresh seeds [1, 2]" in out

    # benchmarks/reseed.py re-trains the chosen config from the folder on unseen seeds.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import reseed

    assert reseed.main([str(exp_dir), "--seeds", "1"]) == 2  # a seed the sweep used
    assert reseed.main([str(exp_dir), "--seeds", "50", "51"]) == 0
    assert "gain on seeds [50, 51]" in capsys.readouterr().out

    # The logged teacher loads back as a teacher from its MLflow URI.
    import mlflow

    from orchestrator.teacher.checkpoint import load_teacher

    mlflow.set_tracking_uri(uri)
    teacher = load_teacher(f"runs:/{teachers[0].info.run_id}/teacher", num_classes=10, in_channels=1, image_size=8)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    # A second sweep reuses the cached teacher (no new teacher run). An error raised after its student is
    # registered ends its parent FAILED with the error, not FINISHED.
    import orchestrator.sweep.run as sweep_run

    def fail_after_registration(*args, **kwargs):
        raise RuntimeError("injected after registration")

    monkeypatch.setattr(sweep_run, "print_summary", fail_after_registration)
    with pytest.raises(RuntimeError, match="injected after registration"):
        main(tiny_args(tmp_path, "--name", "tiny2", "sweep.confirm.top_k=0", "sweep.baseline=false",
                       "distill.kd.temperature=3", samples=1))
    out = capsys.readouterr().out
    assert "reusing cached" in out and "taken out of the search space: distill.kd.temperature=3.0" in out
    (trial,) = runs_by_kind(uri, "tiny2")["trial"]  # the given temperature, not a sampled or paper one
    assert float(trial.data.params["distill.kd.temperature"]) == 3.0
    assert len(runs_by_kind(uri, "distill-teachers")["teacher"]) == 1
    (failed,) = runs_by_kind(uri, "tiny2")["sweep"]
    assert failed.info.status == "FAILED" and failed.data.tags["orchestrator.outcome"] == "failed"
    assert "injected after registration" in failed.data.tags["orchestrator.error"]
    assert any(v.run_id == failed.info.run_id for v in MlflowClient(uri).search_model_versions("name='distill-student'"))
    assert_every_run_closed(uri)


@pytest.mark.slow
def test_trial_with_two_ddp_workers(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, "train.num_workers=2", "train.in_process=false", "sweep.baseline=false",
                     "sweep.confirm.top_k=0", samples=1)  # the trial is what is tested: no confirmation jobs
    assert main(args) == 0
    (child,) = runs_by_kind(f"sqlite:///{tmp_path / 'mlflow.db'}")["trial"]
    assert child.info.status == "FINISHED"
    assert child.data.params["train.num_workers"] == "2"
    assert len(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(child.info.run_id, "val/acc1")) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# 127.0.0.2 is loopback, but Ray does not rewrite it to the machine's LAN address as it does 127.0.0.1.
HOST = "127.0.0.2"


@contextlib.contextmanager
def ray_cluster(env: dict, head_cpus: int = 2) -> Iterator[tuple[str, Callable[..., None]]]:
    """`ray start --head` on loopback with free ports (``head_cpus`` CPUs); yields its address and ``add_node(wrap=(),
    node_env=None)``, which starts one more node (`ray start --address`, 2 CPUs; run through the command prefix
    ``wrap``, with its own environment ``node_env``) and waits until it is alive. Every node is stopped on exit."""
    port = _free_port()
    address = f"{HOST}:{port}"
    ray_bin = str(Path(sys.executable).parent / "ray")
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    head = [
        ray_bin, "start", "--head", "--node-ip-address", HOST, "--port", str(port), "--num-cpus", str(head_cpus),
        "--include-dashboard", "true", "--dashboard-host", HOST, "--dashboard-port", str(_free_port()),
        "--ray-client-server-port", str(_free_port()),  # not the fixed 10001 another test's cluster may hold
        "--temp-dir", f"/tmp/distill-ray-cluster-{port}", "--block",
    ]
    worker = [ray_bin, "start", "--address", address, "--node-ip-address", HOST, "--num-cpus", "2", "--block"]
    nodes = [subprocess.Popen(head, **quiet)]

    def add_node(wrap: tuple[str, ...] = (), node_env: dict | None = None) -> None:
        nodes.append(subprocess.Popen([*wrap, *worker], **{**quiet, "env": node_env or env}))
        _wait_for_nodes(port, len(nodes), env)

    try:
        _wait_for_nodes(port, 1, env)
        yield address, add_node
    finally:
        for node in reversed(nodes):  # `ray start --block` stops its node's processes on SIGTERM
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()


@pytest.mark.slow
def test_tiny_sweep_on_a_two_node_ray_cluster(isolated_cache, tmp_path, mlflow_server):
    """`ray start --head` plus a second node on loopback, used through --address; tracking to an MLflow server (a
    SQLite file is refused on several nodes, see test_cluster_tracking)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_AIR_NEW_OUTPUT": "0"}
    with ray_cluster(env) as (address, add_node):
        add_node()
        args = tiny_args(tmp_path, "--address", address, "sweep.max_concurrent=2", "--tracking-uri", mlflow_server)
        done = subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Leaderboard" in done.stdout
        assert_sweep_logged(mlflow_server, trials=4)


def _wait_for_nodes(port: int, count: int, env: dict, timeout: float = 120) -> None:
    code = (
        f"import ray; ray.init(address='{HOST}:{port}', logging_level='ERROR'); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:  # ray.init against a head that died retries for minutes
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 timeout=60).stdout.strip()
        except subprocess.TimeoutExpired:
            continue
        if out.splitlines() and out.splitlines()[-1] == str(count):
            return
        time.sleep(2)
    raise TimeoutError(f"Ray cluster on port {port} did not reach {count} node(s)")


def test_bad_config_exits_2_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["distill.method=fitnet9"]) == 2
    assert "distill.method" in capsys.readouterr().err
    assert main(["--num-samples", "0"]) == 2
    assert "sweep.num_samples" in capsys.readouterr().err
    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("params:\n  train.lr: {type: float, low: 0.5, high: 0.1}\n")
    assert main([*TINY, f"sweep.search_space={bad_space}"]) == 2
    assert "train.lr.low" in capsys.readouterr().err
    assert main([*TINY, "sweep.search_space=crd"]) == 2  # K up to 16384 > 1,294 digits images
    assert "nce_k" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_missing_dataset_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", "data.dataset=cifar10", f"data.root={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "cifar" in err.lower()


def test_dry_run_starts_nothing(tmp_path, monkeypatch, capsys):
    import ray

    monkeypatch.chdir(tmp_path)
    ray_was_up = ray.is_initialized()  # another test's session Ray may be up; a dry run must not start one
    assert main(["--dry-run", *TINY]) == 0
    out = capsys.readouterr().out
    assert "distill.crd.nce_k" in out and "each trial needs: 1 CPU" in out and "nothing was started" in out
    assert "random until 4 have finished" in out  # then TPE proposes the rest of the 8 default trials
    assert ray.is_initialized() == ray_was_up
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_says_a_given_value_is_held_out_of_the_space(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", "data.dataset=digits", "sweep.search_space=kd", "distill.kd.temperature=4"]) == 0
    out = capsys.readouterr().out
    assert "distill.kd.temperature  = 4.0  (given)" in out and "distill.kd.temperature  ~" not in out
    (line,) = [x for x in out.splitlines() if "taken out of the search space" in x]
    assert "distill.kd.temperature=4.0 (the space sampled float in [1.0, 10.0] log)" in line
    assert main(["--dry-run", "data.dataset=digits", "distill.method=ce+pkt"]) == 0  # outside kd / crd_kd
    out = capsys.readouterr().out
    assert "distill.method          = 'ce+pkt'  (given)" in out and "paper default ce+pkt" in out
    assert "not sampled: distill.crd.weight (only when distill.method in ['crd_kd'])" in out
    assert main(["--dry-run", "data.dataset=digits", "distill.method=crd", "distill.crd.nce_k=4096"]) == 2
    assert "nce_k" in capsys.readouterr().err  # held, but more negatives than digits has images


def test_print_config_shows_resolved_values(capsys):
    assert main(["--print-config", "--seed", "7", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 7" in out and "epochs: 3" in out


@pytest.mark.slow
def test_ctrl_c_leaves_no_run_running_and_resume_finishes(isolated_cache, tmp_path, sqlite_store):
    """SIGINT mid-sweep: exit 130, runs closed KILLED; --resume then finishes the same sweep."""
    import signal

    env = {**os.environ, "DISTILL_RAY_TMPDIR": f"/tmp/distill-ray-sigint-{os.getpid()}"}
    args = [sys.executable, "-m", "orchestrator.sweep",  # the interrupted trial 1 resumes, trial 2 starts after it
            *tiny_args(tmp_path, "sweep.max_concurrent=1", "train.epochs=3", samples=2)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    for line in proc.stdout:  # interrupt once the first epoch of a trial has been reported
        if " epoch 1/3 " in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "--resume" in err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    for exp in client.search_experiments():
        assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    (parent,) = runs_by_kind(uri)["sweep"]
    assert parent.info.status == "KILLED"

    done = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (parent,) = runs_by_kind(uri)["sweep"]
    assert parent.info.status == "FINISHED" and "test/acc1" in parent.data.metrics
    for exp in client.search_experiments():
        assert not client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")


def test_teacher_checkpoint_that_does_not_fit_exits_2(tmp_path, monkeypatch, capsys):
    import torch

    from orchestrator.models import build_model

    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "teacher3.pt"
    model = build_model("tiny_teacher", num_classes=3, in_channels=1)
    torch.save({"arch": "tiny_teacher", "num_classes": 3, "in_channels": 1, "dataset": "other",
                "state_dict": model.state_dict(), "metrics": {}}, bad)
    assert main(["--dry-run", *TINY, f"teacher.checkpoint={bad}"]) == 2
    err = capsys.readouterr().err
    assert "3 classes" in err and "10 classes" in err
    assert main(["--dry-run", *TINY, f"teacher.checkpoint={tmp_path / 'missing.pt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_with_a_different_config_exits_2_naming_the_keys(tmp_path, monkeypatch, capsys):
    from orchestrator.config.schema import dump_yaml
    from orchestrator.sweep.cli import resolve_config
    from orchestrator.sweep.folder import STATE_FILE

    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path)
    cfg = resolve_config(build_parser().parse_intermixed_args(args))
    folder = tmp_path / "runs" / "tiny-1"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")
    (folder / "config.yaml").write_text(dump_yaml(cfg))
    (tmp_path / "runs" / "tiny.latest").write_text(str(folder))
    # nothing given but the folder: the saved config comes back (dry run: nothing starts)
    assert main(["--resume", str(folder), "--dry-run"]) == 0
    assert "nothing was started" in capsys.readouterr().out
    assert main([*args, "--resume", "--dry-run"]) == 0
    capsys.readouterr()
    assert main([*args, "train.epochs=3", "train.lr=0.5", "--resume", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs, train.lr" in err and str(folder) in err
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DISTILL_RUN_DRIVER_KILL_TEST") != "1",
                    reason="4-6 min on a loaded 2-core machine (docs/RELIABILITY.md), beyond CI's budget; the root cause "
                    "it once caught is tested in tests/test_driver_kill.py; run it with DISTILL_RUN_DRIVER_KILL_TEST=1")
def test_driver_sigkill_three_times_then_resume_finishes(isolated_cache, tmp_path, sqlite_store):
    """Modelled on Ray Tune's restore tests: SIGKILL the sweep driver at random points (3 times), --resume until
    it finishes; nothing is issued or run twice, progress loses at most the epoch in flight, the Optuna study
    (the folder's journal) holds every trial."""
    import random
    import re
    import signal

    import optuna

    from orchestrator.sweep.folder import OPTUNA_JOURNAL, optuna_storage

    rng = random.Random(14)
    env = {**os.environ, "DISTILL_RAY_TMPDIR": f"/tmp/distill-ray-sigkill-{os.getpid()}"}
    epochs, samples = 3, 4
    args = [sys.executable, "-m", "orchestrator.sweep",
            *tiny_args(tmp_path, "sweep.max_concurrent=1", f"train.epochs={epochs}", samples=samples)]
    line_re = re.compile(r"trial\s+(\d+)\s+epoch (\d+)/")
    attempts: list[list[tuple[str, int]]] = []  # per driver start: (trial, epoch) in printed order
    kills = 0
    while True:
        assert len(attempts) < 10, "the sweep did not finish after 10 starts"
        proc = subprocess.Popen([*args, *(["--resume"] if attempts else [])], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        seen: list[tuple[str, int]] = []
        attempts.append(seen)
        target = rng.randint(1, 4) if kills < 3 else None  # kill after this many epoch lines of this start
        out = []
        for line in proc.stdout:
            out.append(line)
            match = line_re.search(line)
            if match:
                seen.append((match.group(1), int(match.group(2))))
            if target is not None and (len(seen) >= target or "== confirm" in line):
                time.sleep(rng.uniform(0.0, 3.0))
                break
        (tmp_path / f"start-{len(attempts)}.log").write_text("".join(out))  # what each start printed (diagnosis)
        if target is None:
            assert proc.wait(timeout=900) == 0, "".join(out)[-4000:]
            break
        proc.send_signal(signal.SIGKILL)  # the driver
        proc.wait()
        time.sleep(2)
        try:  # what Ray left of the killed driver's local cluster
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kills += 1

    # progress never went backwards by more than the epoch in flight; no finished trial ran again
    last: dict[str, int] = {}
    for seen in attempts:
        first: dict[str, int] = {}
        for trial, epoch in seen:
            first.setdefault(trial, epoch)
        for trial, epoch in first.items():
            assert epoch >= last.get(trial, 0), (trial, epoch, last)
            assert last.get(trial, 0) < epochs, f"finished trial {trial} ran again"
        for trial, epoch in seen:
            last[trial] = max(last.get(trial, 0), epoch)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    kinds = runs_by_kind(uri)
    numbers = [r.data.tags.get("trial_number") for r in kinds["trial"]]
    assert len(numbers) == samples and len(set(numbers)) == samples, numbers  # each trial number issued once
    assert all(r.info.status == "FINISHED" for r in kinds["trial"]), [(r.info.run_name, r.info.status)
                                                                      for r in kinds["trial"]]
    for run in [*kinds["trial"], *kinds.get("confirm", [])]:
        for key in ("val/acc1", "train/loss"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, len(steps) + 1)), (run.info.run_name, key, steps)  # no duplicate steps
    for exp in client.search_experiments():
        running = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
        assert not running, [(r.info.run_name, r.info.start_time, r.data.tags) for r in running]
    (parent,) = kinds["sweep"]
    assert parent.info.status == "FINISHED" and parent.data.tags["orchestrator.outcome"] == "completed"
    # Closed by its scope, after the report (the last artifact), not when the model was registered.
    assert "report" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert_every_run_closed(uri)

    folder = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert (folder / OPTUNA_JOURNAL).is_file() and (folder / "search_space.yaml").is_file()
    study = optuna.load_study(study_name=folder.name, storage=optuna_storage(folder, fresh=False))
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == len(study.trials) == samples, [t.state for t in study.trials]  # every trial, no orphan
