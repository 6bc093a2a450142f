"""Ray: connect or start locally, and check that a trial fits before anything is scheduled."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import ray

from orchestrator.infra.ray_compat import local_ray_kwargs
from orchestrator.infra.tracking import is_local


class ClusterError(RuntimeError):
    """A trial cannot be scheduled on this cluster (checked up front)."""


REUSE_WAIT = "TUNE_FUNCTION_THREAD_TIMEOUT_S"


def resolve_address(address: str | None) -> str | None:
    """``--address``, else ``$RAY_ADDRESS``, else None (start a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def connect(address: str | None, num_cpus: int | None = None, ship_package: bool = False) -> bool:
    """Connect to ``address`` or start a local Ray (with the dashboard, see NOTES-ray pitfall 1).
    ``ship_package`` (``ray.ship_package``, with an ``address``): the job's workers on every node import this
    package (``orchestrator`` and ``pipelines``) from the driver's copy, uploaded once per job (Ray's
    ``runtime_env`` ``py_modules``), not from what the node has installed.

    Returns True if this call started Ray (the caller shuts it down).
    """
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C reaches our handler
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress lines instead of Tune's tables
    # With checkpoint retention (num_to_keep) Tune snapshots its state at every report and warns each time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Each of those snapshots uploads Tune's per-trial logs again: only result.json is kept
    # (orchestrator.sweep.results_log; Tune's CSV, params and TensorBoard files are not written).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A reused trial actor (in-process trials) waits this long for the previous trial's thread (its
    # TorchTrainer winding down, its MLflow run closing) before starting the next trial. Tune's default,
    # 2 s, is too short on a loaded machine: the reset fails, the new trial errors and the sweep stalls.
    os.environ.setdefault(REUSE_WAIT, "300")  # a local cluster's workers inherit it
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        runtime_env = {"env_vars": {REUSE_WAIT: os.environ[REUSE_WAIT]}}
        if ship_package:
            runtime_env["py_modules"] = package_folders()
        ray.init(address=address, runtime_env=runtime_env, **common)
        handle_signals()
        return True
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        **local_ray_kwargs(),
        **common,
    )
    handle_signals()
    return True


def package_folders() -> list[str]:
    """The folders of this project's packages, as the driver imports them (found without importing ``pipelines``)."""
    from importlib.util import find_spec

    return [str(next(iter(find_spec(name).submodule_search_locations))) for name in ("orchestrator", "pipelines")]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def handle_signals() -> None:
    """Ctrl-C and `kill` end the driver with KeyboardInterrupt (runs closed KILLED).

    Set after ray.init, which installs handlers of its own.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)


def node_resources() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def alive_nodes() -> int:
    """How many nodes of the connected Ray cluster are alive."""
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def driver_only_tracking(uri: str, nodes: int) -> str | None:
    """Why ``uri`` cannot take the metrics of a cluster of ``nodes`` alive nodes, or None if it can.

    A local store (a ``sqlite:`` file, a file store path) lives on the driver's disk: a trial on another
    node would write into a file of the same name on its own node, and its metrics would never reach it.
    """
    if nodes <= 1 or not is_local(uri):
        return None
    return (
        f"tracking.uri {uri} is a file on the driver's disk, which trials on the cluster's other "
        f"{nodes - 1} node(s) cannot reach; start an MLflow tracking server the nodes can reach (e.g. `mlflow "
        "server --host 0.0.0.0 --backend-store-uri sqlite:///mlflow.db`) and pass --tracking-uri http://HOST:5000"
    )


def check_tracking(uri: str) -> None:
    """Raise ClusterError if the connected cluster has several nodes and ``uri`` is driver-local."""
    reason = driver_only_tracking(uri, alive_nodes())
    if reason:
        raise ClusterError(reason)


def check_fits(trial: dict[str, float], per_worker_cpu: float, use_gpu: bool, num_workers: int) -> None:
    """Raise ClusterError if one trial can never be scheduled (instead of PENDING forever)."""
    nodes = node_resources()
    total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
    largest = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if trial["CPU"] > total_cpu:
        raise ClusterError(
            f"one trial needs {trial['CPU']:g} CPUs (the trial process + {num_workers} worker(s) x "
            f"{per_worker_cpu:g}) but the cluster has {total_cpu:g}; lower train.num_workers or "
            "train.cpus_per_worker, or add nodes"
        )
    if per_worker_cpu > largest:
        raise ClusterError(
            f"a worker needs {per_worker_cpu:g} CPUs but the largest node has {largest:g}; lower train.cpus_per_worker"
        )
    if use_gpu:
        gpus = sum(n.get("GPU", 0.0) for n in nodes)
        if gpus < num_workers:
            raise ClusterError(
                f"train.use_gpu=true needs {num_workers} GPU(s) per trial but the cluster has {gpus:g}; "
                "set train.use_gpu=false or connect to a GPU cluster with --address"
            )


def max_concurrency(trial: dict[str, float], reserved_cpu: float = 0.0) -> int:
    """How many trials fit at once on the cluster's CPUs (and GPUs), at least 1."""
    res = ray.cluster_resources()
    fit = int((res.get("CPU", 0.0) - reserved_cpu) // trial["CPU"]) if trial["CPU"] else 1
    if trial.get("GPU"):
        fit = min(fit, int(res.get("GPU", 0.0) // trial["GPU"]))
    return max(1, fit)


def wait_for_free(trial: dict[str, float], timeout_s: float = 180.0) -> bool:
    """Wait (up to ``timeout_s``) until one trial's CPUs/GPUs are free again: the worker groups of trials Tune
    stopped are released asynchronously, and a stage started before that times out waiting for workers.
    Returns whether they are free."""
    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources()
        if free.get("CPU", 0.0) >= trial["CPU"] and free.get("GPU", 0.0) >= trial.get("GPU", 0.0):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
