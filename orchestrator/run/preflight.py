"""Resources a trial needs, checked before anything starts (also in ``--dry-run``).

Without ``--address`` the local machine is the cluster: a trial's workers must fit
its CPU cores (``ray.num_cpus`` when given) and, with ``train.use_gpu``, its GPUs.
With an address the check runs against the cluster (``cluster.check_fits``).
The sweep's storage folder must take a write and have room for checkpoints
(:func:`check_storage`).

What every ``--dry-run`` checks as its run would, writing nothing: the tracking store
(:func:`check_tracking_store`: a server answers, a SQLite file is a database or could be created), the
storage folder (:func:`check_storage`: its probe is removed, no folder is created) and each given teacher
file (:func:`check_teacher`: built in memory, no imported copy in the cache).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from orchestrator.config.schema import Config, ConfigError
from orchestrator.infra.storage import LOCAL_ROOT


def check_local(cfg: Config, trial_cpu: float, in_process: bool) -> None:
    """Raise ConfigError naming the key, what a trial needs and what this machine has."""
    tr = cfg.train
    workers = tr.num_workers * tr.cpus_per_worker
    if cfg.ray.num_cpus:  # the local Ray gets exactly this many logical CPUs
        need, have = trial_cpu, f"ray.num_cpus={cfg.ray.num_cpus}"
        fits = trial_cpu <= cfg.ray.num_cpus
    else:  # the local Ray gets max(cores, trial_cpu) CPUs: only the workers compute
        need, have = workers, f"{os.cpu_count() or 1} CPU core(s) on this machine"
        fits = workers <= (os.cpu_count() or 1)
    if not fits:
        raise ConfigError(
            "train.num_workers", tr.num_workers,
            f"a count whose trial fits {have}; one trial needs {need:g} CPUs ({tr.num_workers} worker(s) x "
            f"{tr.cpus_per_worker} CPU{'' if need == workers else ' + 1 for the trial process'}). Lower "
            "train.num_workers or train.cpus_per_worker, or run on a cluster with --address",
        )
    if tr.use_gpu:
        import torch

        gpus = torch.cuda.device_count()
        if gpus < tr.num_workers:
            raise ConfigError(
                "train.use_gpu", True,
                f"false here: a trial needs {tr.num_workers} GPU(s), this machine has {gpus}; "
                "or run on a GPU cluster with --address",
            )


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


def creatable(path: Path) -> str | None:
    """Why the file or folder ``path`` could not be created by this process (None: it could); nothing is made."""
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this process"
    return None


def check_tracking_store(uri: str, key: str = "tracking.uri") -> None:
    """Raise ConfigError naming ``key`` if the MLflow store at ``uri`` cannot be used, as the run would find
    out later; creates nothing. A server (``http(s)://``) must answer; a SQLite file must be a SQLite
    database (opened read-only), or, if missing, be creatable (MLflow creates it and its folders); a
    ``file:`` store's folder must be writable or creatable. Other schemes are left to MLflow."""
    from urllib.parse import urlparse

    from orchestrator.infra import tracking
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            tracking.check_connection(uri)
        except tracking.TrackingError as exc:
            raise ConfigError(key, uri, f"a reachable MLflow tracking server: {exc}") from exc
        return
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if path is None or str(path) in ("", ":memory:"):
            return
        if path.is_dir():
            raise ConfigError(key, uri, f"a SQLite file; {path} is a folder")
        if not path.exists():
            why = creatable(path)
            if why:
                raise ConfigError(key, uri, f"a SQLite file MLflow can create; {why}")
            return
        import sqlite3

        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                db.execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(key, uri, f"a SQLite database; {path} cannot be read as one ({exc})") from exc
        if not os.access(path, os.W_OK):
            raise ConfigError(key, uri, f"a SQLite file this process can write to; {path} is read-only")
        return
    if scheme in ("file", ""):
        folder = Path(urlparse(uri).path if scheme else uri)
        if folder.is_dir():
            why = None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable by this process"
        else:
            why = f"{folder} is a file" if folder.exists() else creatable(folder)
        if why:
            raise ConfigError(key, uri, f"a folder MLflow can write its file store to; {why}")


def check_teacher(source: str, arch: str | None, data, normalize: str, arch_key: str, uri: str):
    """The frozen teacher ``source`` gives, checked as the run checks it but built in memory (nothing written);
    TeacherCheckpointError naming the file and the real reason otherwise. A ``runs:/``/``models:/`` URI is
    looked up in the tracking store ``uri``; a SQLite store that does not exist yet is not created to find it."""
    from orchestrator.teacher.checkpoint import TeacherCheckpointError, checked_teacher

    if source.startswith(("runs:/", "models:/")):
        store = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if store is not None and not store.is_file():
            raise TeacherCheckpointError(f"teacher '{source}' names a run in the MLflow store {uri}, which does not "
                                         "exist; give the --tracking-uri that holds it")
        import mlflow

        mlflow.set_tracking_uri(uri)  # where the run looks it up too
    return checked_teacher(source, arch, data, normalize, arch_key)


def check_cluster(address: str, trial: dict[str, float], cfg: Config) -> None:
    """Connect to ``address`` (or use the Ray already up) and raise ClusterError if a trial can never run there
    or the cluster has several nodes and the tracking store is a file on the driver's disk."""
    import ray

    from orchestrator.infra import cluster
    from orchestrator.infra.tracking import resolve_tracking_uri

    started = cluster.connect(address)
    try:
        cluster.check_tracking(resolve_tracking_uri(cfg.tracking.uri))
        cluster.check_fits(trial, cfg.train.cpus_per_worker, cfg.train.use_gpu, cfg.train.num_workers)
    finally:
        if started:
            ray.shutdown()


MIN_FREE_MB = 100  # room for a few checkpoints of the default models (one is ~56 MB with CRD's banks)
PROBE_BYTES = 1 << 20


def check_storage(storage_path: str, key: str = "sweep.storage_path", min_free_mb: int = MIN_FREE_MB) -> None:
    """Raise ConfigError naming ``key`` and the folder if ``storage_path`` (a local folder; for a URI, one pyarrow
    opens, and ``./runs``, the driver's folder) cannot take a 1 MiB write or has less than ``min_free_mb`` MB free.
    The probe goes to the nearest existing folder (nothing is created) and is removed."""
    if "://" in storage_path:  # Ray's records go there; the driver's own files to ./runs (orchestrator.infra.storage)
        check_storage_uri(storage_path, key)
        storage_path = LOCAL_ROOT
    path = Path(storage_path).resolve()
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise ConfigError(key, str(path), f"a folder this process can create; {folder} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".distill-write-probe-") as probe:
            probe.write(b"\0" * PROBE_BYTES)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ConfigError(
            key, str(path), f"a folder this process can write to{'' if not full else ' with free space'}; writing "
            f"{PROBE_BYTES >> 20} MiB to {folder} failed: {exc.strerror or exc}",
        ) from exc
    free_mb = shutil.disk_usage(folder).free / 1e6
    if free_mb < min_free_mb:
        raise ConfigError(
            key, str(path), f"a folder on a filesystem with at least {min_free_mb} MB free for checkpoints; {folder} "
            f"has {free_mb:.1f} MB free",
        )


def check_storage_uri(uri: str, key: str = "sweep.storage_path") -> None:
    """Raise ConfigError naming ``key`` if ``uri`` is not a filesystem pyarrow (hence Ray) can open from here: an
    unknown scheme, or a store it cannot reach (``s3://``: it asks the bucket's region)."""
    from orchestrator.infra.storage import filesystem

    try:
        filesystem(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... with the reason
        raise ConfigError(key, uri, "a local folder or a URI of a filesystem pyarrow opens (s3://bucket/prefix, "
                                    f"gs://..., hdfs://..., with its credentials in the environment): {str(exc).splitlines()[0]}") from exc
