"""Where a sweep's files live when ``sweep.storage_path`` is a URI (``s3://``, ``gs://``, any pyarrow filesystem).

- The sweep folder (state file, ``config.yaml``, the Optuna journal, leaderboard, summary, exports, report) is a
  folder on the driver's disk, ``./runs/<name>-<time>``: only the driver reads and writes it.
- Ray's records (Tune's experiment state, every trial's results and checkpoints, the Train runs) go to the same
  relative path under the URI, ``<uri>/<name>-<time>``: every node writes there, and ``--resume`` restores from it.
- The trials' inputs that exist only on the driver's disk (the teacher checkpoint, the teacher-output files and
  view-cache folders) are uploaded once to ``<uri>/<name>-<time>/inputs/`` (:func:`publish`); each node downloads
  each once into its cache folder (:func:`fetch`) before a trial reads it.

With a local ``sweep.storage_path`` (one machine, or a filesystem every node mounts) nothing moves: the sweep
folder is Ray's folder, and paths are passed as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

LOCAL_ROOT = "runs"  # the sweep folders' parent on the driver when the storage is a URI
INPUTS = "inputs"
DONE = ".uploaded"  # marker written after a complete upload (an interrupted one is redone)


def is_uri(path: str | None) -> bool:
    """A storage URI (``scheme://...``) rather than a local folder."""
    return bool(path) and "://" in str(path)


def local_root(storage_path: str | None) -> Path:
    """The driver's folder holding the sweep folders: ``storage_path`` itself, or ``./runs`` for a URI."""
    return Path(LOCAL_ROOT if is_uri(storage_path) or not storage_path else storage_path).resolve()


def location(storage_path: str | None, folder: Path) -> str:
    """Where Ray keeps what belongs to ``folder`` (a sweep folder or a folder inside it): ``folder`` itself, or
    the same path relative to :func:`local_root` under the URI ``storage_path``."""
    if not is_uri(storage_path):
        return str(folder)
    relative = Path(folder).resolve().relative_to(local_root(storage_path)).as_posix()
    return f"{str(storage_path).rstrip('/')}/{relative}"


def split(place: str) -> tuple[str, str]:
    """(parent, name) of a :func:`location`: Tune's ``storage_path`` and experiment ``name``."""
    parent, _, name = place.rstrip("/").rpartition("/")
    return parent, name


def filesystem(uri: str):
    """(pyarrow filesystem, path on it) of ``uri``; credentials and endpoint from the usual environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    import pyarrow.fs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def inputs_uri(place: str) -> str:
    """Where the trials' inputs of the sweep at :func:`location` ``place`` go ("" when it is a local folder)."""
    return f"{place.rstrip('/')}/{INPUTS}" if is_uri(place) else ""


def publish(paths: list[str], dest: str) -> list[str]:
    """Upload each local file or folder in ``paths`` to ``dest/<hash of its path>-<name>`` (once: a complete earlier
    upload is kept) and return their URIs; entries that are not local paths (MLflow URIs) are returned as they are."""
    import pyarrow.fs

    out = []
    for path in paths:
        if ":/" in path or not os.path.exists(path):
            out.append(path)
            continue
        # Two local files of one name (teachers at /a/teacher.pt and /b/teacher.pt) get their own uploads.
        where = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]
        target = f"{dest}/{where}-{Path(path).name}"
        fs, fs_path = filesystem(target)
        if fs.get_file_info(f"{fs_path}{DONE}").type == pyarrow.fs.FileType.NotFound:
            if os.path.isdir(path):
                pyarrow.fs.copy_files(path, fs_path, destination_filesystem=fs)
            else:
                fs.create_dir(fs_path.rpartition("/")[0], recursive=True)
                pyarrow.fs.copy_files(path, fs_path, destination_filesystem=fs)
            with fs.open_output_stream(f"{fs_path}{DONE}") as marker:
                marker.write(b"ok")
        out.append(target)
    return out


def publish_timed(paths: list[str], dest: str) -> tuple[list[str], float, int]:
    """:func:`publish`, with its seconds and the bytes of the local ``paths``."""
    start = time.perf_counter()
    uris = publish(paths, dest)
    return uris, time.perf_counter() - start, sum(_size(p) for p in paths if ":/" not in p and os.path.exists(p))


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def node_cache() -> Path:
    """This node's folder of downloaded inputs (under ``$DISTILL_CACHE_DIR``, else ``~/.cache/distill-orchestrator``)."""
    from orchestrator.infra.cache_dir import default_cache_dir

    return default_cache_dir() / "from-storage"


def fetch(uri: str) -> str:
    """The local copy on this node of the input :func:`publish` uploaded to ``uri``: downloaded on first use
    (into a temporary folder, then renamed into place: trials fetching at once on one node download it once
    each at worst and never read a partial copy), then reused."""
    import pyarrow.fs

    name = uri.rstrip("/").rpartition("/")[2]
    target = node_cache() / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    if target.exists():
        return str(target)
    fs, fs_path = filesystem(uri)
    info = fs.get_file_info(fs_path)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} is not in the sweep's storage (the driver uploads it before any trial)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
    try:
        download(fs, fs_path, staging / name)
        try:
            os.rename(staging / name, target)
        except OSError:  # another trial on this node finished first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def fetch_under(paths: list[str], prefix: str) -> list[str]:
    """``paths`` with each one under ``prefix`` (the sweep's :func:`inputs_uri`) replaced by its local copy."""
    return [fetch(p) if prefix and p.startswith(prefix + "/") else p for p in paths]


def local_copy(fs_path: str, storage_path: str | None, dest: Path) -> Path:
    """A checkpoint folder as a local path: ``fs_path`` itself when it is on this disk, else (a path on the URI
    storage's filesystem, as Ray reports it) downloaded once into ``dest/<parent>/<name>``."""
    if not is_uri(storage_path) or os.path.exists(fs_path):
        return Path(fs_path)
    target = dest / Path(fs_path).parent.name / Path(fs_path).name
    if not target.exists():
        download(filesystem(str(storage_path))[0], fs_path, target)
    return target


def download(fs, fs_path: str, target: Path) -> None:
    """Copy the file or folder ``fs_path`` of the pyarrow filesystem ``fs`` to the local ``target`` (folders made
    as needed: object stores may hold no folder markers)."""
    import pyarrow.fs

    if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.File:
        files = [(fs_path, target)]
    else:
        found = fs.get_file_info(pyarrow.fs.FileSelector(fs_path, recursive=True))
        files = [(f.path, target / f.path[len(fs_path.rstrip("/")) + 1:]) for f in found
                 if f.type == pyarrow.fs.FileType.File]
        if not files:
            raise FileNotFoundError(f"{fs_path} holds no file")
    for source, local in files:
        local.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(source, str(local), source_filesystem=fs)


def checkpoint_files(folders: list[str], storage_path: str, name: str, dest: Path) -> list[tuple[Path, str]]:
    """Each ``checkpoint_*/<name>`` file under ``folders`` (paths or URIs on the URI ``storage_path``'s filesystem)
    downloaded to ``dest/<i>/checkpoint_*/<name>``: (local folder ``dest/<i>``, the folder's path on the storage)."""
    import pyarrow.fs

    fs, _ = filesystem(storage_path)
    out = []
    for i, folder in enumerate(folders):
        fs_path = filesystem(folder)[1] if is_uri(folder) else folder
        local = dest / str(i)
        for info in fs.get_file_info(pyarrow.fs.FileSelector(fs_path, allow_not_found=True)):
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                if fs.get_file_info(f"{info.path}/{name}").type == pyarrow.fs.FileType.File:
                    download(fs, f"{info.path}/{name}", local / info.base_name / name)
        out.append((local, fs_path))
    return out
