"""A two-node Ray cluster whose worker node shares no filesystem with the driver: storage in an S3 bucket (moto's
server), tracking on an MLflow server, trials on the worker node; the driver SIGKILLed mid-sweep, its ./runs
deleted, and resumed from the bucket."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_compare import _free_port, mlflow_server  # noqa: F401 - a fixture: a real `mlflow server` on loopback
from test_sweep import assert_sweep_logged, ray_cluster, runs_by_kind, tiny_args

from orchestrator.infra import cluster

BUCKET = "sweeps"
TRIAL_EPOCH = re.compile(r"trial\s+\d+\s+epoch \d+/")  # a trial's progress line (not the teacher's)
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# Ray node ids of the nodes, as a driver on the cluster sees them (the head: the node with the head's resource).
NODES = ("import json, ray; ray.init(address='{address}', logging_level='ERROR'); print(json.dumps({{"
         "('head' if 'node:__internal_head__' in n['Resources'] else 'worker'): n['NodeID'] "
         "for n in ray.nodes() if n['Alive']}}))")
# What the worker node sees of the driver's paths: a Ray task pinned to it lists them.
SEES = ("import json, os, ray; from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On; "
        "ray.init(address='{address}', logging_level='ERROR'); "
        "f = ray.remote(lambda ps: {{p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in ps}}); "
        "print(json.dumps(ray.get(f.options(scheduling_strategy=On('{node}', soft=False)).remote({paths}))))")


@pytest.fixture
def s3_server(tmp_path):
    """moto's S3 server on 127.0.0.1 with one empty bucket; yields its endpoint URL."""
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.3)
        boto3.client("s3", endpoint_url=url, **_boto_creds()).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def _boto_creds() -> dict:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}


def bucket_keys(endpoint: str) -> list[str]:
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint, **_boto_creds()).get_paginator("list_objects_v2")
    return [o["Key"] for page in pages.paginate(Bucket=BUCKET) for o in page.get("Contents", [])]


def hidden(paths: list[Path]) -> tuple[str, ...]:
    """A command prefix: a private mount namespace in which each of ``paths`` is an empty tmpfs."""
    mounts = " && ".join(f"mount -t tmpfs -o size=512m tmpfs {p}" for p in paths)
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "hide")


def _can_hide() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode == 0


def _python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.skipif(not _can_hide(), reason="needs unshare --mount and tmpfs mounts (root or user namespaces)")
def test_sweep_on_a_worker_node_that_sees_no_driver_file_resumes_from_the_bucket(isolated_cache, tmp_path,
                                                                                    mlflow_server, s3_server):
    """The worker node runs in its own mount namespace where the driver's working folder (its runs folder, its
    cache, the servers' files), the home cache and this project's source (the package folders the venv's
    editable install points at: the sweep ships its own copy, ray.ship_package) are empty tmpfs mounts; the head node has no CPU, so every trial
    runs on the worker. Storage: s3://sweeps/runs on moto; tracking: an MLflow server. The driver is SIGKILLed
    once the first trial has reported and its ./runs deleted, then --resume finishes the sweep from the bucket."""
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_server, "RAY_AUTH_MODE": "disabled",
           "RAY_AIR_NEW_OUTPUT": "0"}
    home_cache = Path.home() / ".cache"
    secret = tmp_path / "only-on-the-driver.txt"
    secret.write_text("the worker must not see this")
    args = [sys.executable, "-m", "orchestrator.sweep",
            *tiny_args(tmp_path, "sweep.max_concurrent=1", "--storage-path", f"s3://{BUCKET}/runs",
                       "--tracking-uri", mlflow_server, samples=3)]
    package = [Path(p) for p in cluster.package_folders()]  # the nodes run the driver's copy (ray.ship_package)
    with ray_cluster(env, head_cpus=0) as (address, add_node):
        add_node(wrap=hidden([tmp_path, home_cache, *package]))
        nodes = json.loads(_python(NODES.format(address=address), env))
        seen = json.loads(_python(SEES.format(address=address, node=nodes["worker"],
                                              paths=[str(p) for p in (tmp_path, home_cache, *package)]), env))
        assert seen == {str(p): [] for p in (tmp_path, home_cache, *package)}, seen  # the driver's files: not there
        assert secret.is_file()

        args += ["--address", address]
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        first = []
        for line in proc.stdout:  # SIGKILL once a trial has reported an epoch (it is training or has finished)
            first.append(line)
            if TRIAL_EPOCH.search(line):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (tmp_path / "first.log").write_text("".join(first))
        assert any(TRIAL_EPOCH.search(line) for line in first), "".join(first)[-4000:]
        assert any("/experiment_state" in k for k in bucket_keys(s3_server))  # Tune saved to the bucket

        folder = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir()).name
        shutil.rmtree(tmp_path / "runs")  # a driver on a new machine: the sweep folder only in the bucket
        resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=900)
        (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"the sweep folder {tmp_path / 'runs' / folder} restored from s3://{BUCKET}/runs/{folder}/driver" \
            in resumed.stdout

    assert_sweep_logged(mlflow_server, trials=3)  # every trial FINISHED, val/acc1 at every epoch, nothing RUNNING
    kinds = runs_by_kind(mlflow_server)
    ran_on = {r.info.run_name: r.data.tags.get("ray.node_id") for r in [*kinds["trial"], *kinds["confirm"]]}
    print(f"Ray nodes: head {nodes['head']}, worker {nodes['worker']}; trials and jobs ran on: {ran_on}")
    assert set(ran_on.values()) == {nodes["worker"]}, ran_on

    keys = bucket_keys(s3_server)
    for run in kinds["trial"]:  # each trial's checkpoints are in the bucket, under the sweep's place
        trial_id = run.data.tags["trial_id"]
        assert any(k.startswith(f"runs/{folder}/") and trial_id in k and "/checkpoint_" in k for k in keys), trial_id
    assert any(k.startswith(f"runs/{folder}/inputs/") for k in keys)  # the teacher and its outputs, for the nodes
    assert not list(tmp_path.glob(f"runs/{folder}/*/checkpoint_*")), "Ray wrote checkpoints to the driver's disk"
