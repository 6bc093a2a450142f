"""Shared fixtures: one Ray per test session (small, local), MLflow stores under tmp_path.

Under pytest-xdist (``make test`` runs two workers) each worker is its own test session: its own basetemp (so its
own MLflow stores) and its own cache folder; the tests on the session's Ray are all given to one worker
(``pytest_xdist_make_scheduler`` below), which starts it (temp dir ``/tmp/distill-ray-tests-<worker>``).
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
# A Train controller polls its worker group this often (Ray's default 2 s): each start, report, finish and
# restart of a DDP trial waits for the next poll. 0.5 s here (Ray workers and the tests' subprocess sweeps
# inherit it) saved ~17% on the worker-kill + DDP-trial pair (136 -> 113 s, BENCHMARKS 9); the same real worker
# groups run, only sooner noticed.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest-xdist; "" otherwise
if WORKER:  # teacher/output caches of tests that do not ask for isolated_cache: one folder per worker
    from orchestrator.infra.cache_dir import default_cache_dir

    os.environ["DISTILL_CACHE_DIR"] = str(Path(default_cache_dir()) / f"xdist-{WORKER}")


def pytest_collection_modifyitems(config, items):
    """The slow (end-to-end) tests first, in their collected order: spread over the xdist workers while the short
    tests fill the end (no worker finishes its part long after the other)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def node_ids_on_the_session_ray(folder: Path = Path(__file__).parent) -> set[str]:
    """The node ids (``tests/test_x.py::test_name``, no parameters) of the test functions that take ``ray_session``,
    read from the sources: the xdist controller, which schedules, does not collect."""
    found = set()
    for path in sorted(folder.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef) and any(arg.arg == "ray_session" for arg in node.args.args):
                found.add(f"{folder.name}/{path.name}::{node.name}")
    return found


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: none without it (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist with ``--dist load`` (``make test``): the tests on the session's Ray run on one worker, one
    after the other, so only one session Ray is started (its services cost ~30 s of CPU over a run); every other test
    goes to whichever worker is free. The group is handed out first, then the others in collection order (slow first).
    (pytest-xdist's ``xdist_group`` mark would do this, but its ``loadgroup`` does not group under pytest 9.2.)"""
    if config.getoption("dist") != "load":  # another --dist asked for: xdist's own scheduler
        return None
    from xdist.scheduler import LoadScopeScheduling

    on_ray = node_ids_on_the_session_ray()

    class SessionRayOnOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "ray_session" if nodeid.split("[")[0] in on_ray else nodeid

    return SessionRayOnOneWorker(config, log)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray with the dashboard (needed for clean trial stops) and 4 logical CPUs."""
    import ray

    from orchestrator.infra import cluster
    ray.shutdown()
    os.environ["DISTILL_RAY_TMPDIR"] = "/tmp/distill-ray-tests" + (f"-{WORKER}" if WORKER else "")
    cluster.connect(None, num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once per test session (creating one runs every MLflow migration)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_store(tmp_path, store_template) -> str:
    """``tmp_path / "mlflow.db"``, the URI the sweep tests pass, holding a new empty store (a copy of the session's
    template: the schema and its Default experiment, as MLflow creates them; ~1 s of CPU saved per test); its URI."""
    shutil.copyfile(store_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Teacher/baseline/output caches under tmp_path so tests never reuse a user's cache."""
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def digits():
    """(config, data, teacher): digits with tiny models and a tiny_teacher trained for 6 epochs (>80% test)."""
    from orchestrator.config.schema import load_config
    from orchestrator.data import build_data
    from orchestrator.run.alone import train_alone

    cfg = load_config(
        None,
        [
            "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student",
            "data.batch_size=64", "distill.crd.nce_k=256", "train.lr=0.1", "train.epochs=6",
        ],
    )
    data = build_data(cfg.data, cfg.seed)
    teacher, metrics = train_alone(cfg, data, "tiny_teacher", 6, 0.1, label="teacher")
    assert metrics["test/acc1"] > 0.8, metrics
    return cfg, data, teacher
