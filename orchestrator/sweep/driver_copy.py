"""With a storage URI, the driver's sweep folder kept in the storage too, so that ``--resume`` works from the
bucket alone: a driver on a new machine (a KubeRay head pod that was replaced, a laptop that lost ``./runs``).

What a resume reads from the sweep folder (:mod:`orchestrator.sweep.folder`): the state file (MLflow run ids, the
registered version), ``config.yaml``, ``search_space.yaml``, the Optuna journal and the published front's record.
:func:`upload` copies them to ``<uri>/<sweep>/driver/``, and ``<uri>/<name>.latest`` names the sweep's folder.
When they are uploaded:

- when the driver writes them outside a Tune run (the folder opened, the student registered, the front published);
- at every save of Tune's experiment state, before Tune uploads it (:class:`CopyOnSave`, a Tune callback whose
  ``get_state`` Tune calls on the driver inside each save): the journal in the bucket is never older than the
  searcher Tune restores, which is what :class:`orchestrator.infra.ray_compat.JournalSearch` relies on.

:func:`restore` brings them back into ``./runs/<sweep>`` before a resume reads them, when they are not there.
With a local ``sweep.storage_path`` nothing is copied: the sweep folder is on the disk Ray's records are on.
"""

from __future__ import annotations

from pathlib import Path

from ray import tune

from orchestrator.infra import storage
from orchestrator.sweep.confirm.front_stage import FRONT_FILE
from orchestrator.sweep.folder import CONFIG_FILE, OPTUNA_JOURNAL, SPACE_FILE, STATE_FILE

RESUME_FILES = (STATE_FILE, CONFIG_FILE, SPACE_FILE, OPTUNA_JOURNAL, FRONT_FILE)
DRIVER = "driver"


def _driver_uri(storage_path: str, folder_name: str) -> str:
    return f"{str(storage_path).rstrip('/')}/{folder_name}/{DRIVER}"


def _latest_uri(storage_path: str, name: str) -> str:
    return f"{str(storage_path).rstrip('/')}/{name}.latest"


_uploaded: dict[str, tuple[int, int]] = {}  # target URI -> (size, mtime_ns) of the file last copied there


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def upload(folder: Path, storage_path: str | None) -> None:
    """Copy the resume files of the sweep folder ``folder`` (those that exist and changed since this process last
    copied them) to ``<uri>/<folder name>/driver/`` (nothing with a local ``storage_path``)."""
    if not storage.is_uri(storage_path):
        return
    target = _driver_uri(storage_path, folder.name)
    present = [(folder / name, _stamp(folder / name)) for name in RESUME_FILES if (folder / name).is_file()]
    changed = [(path, stamp) for path, stamp in present if _uploaded.get(f"{target}/{path.name}") != stamp]
    if not changed:
        return
    fs, base = storage.filesystem(target)
    fs.create_dir(base, recursive=True)
    for path, stamp in changed:
        with fs.open_output_stream(f"{base}/{path.name}") as out:
            out.write(path.read_bytes())
        _uploaded[f"{target}/{path.name}"] = stamp


def point_latest(folder: Path, storage_path: str | None, name: str) -> None:
    """``<uri>/<name>.latest`` names ``folder`` (what ``--resume latest`` finds when ``./runs`` has no pointer)."""
    if not storage.is_uri(storage_path):
        return
    fs, path = storage.filesystem(_latest_uri(storage_path, name))
    fs.create_dir(path.rpartition("/")[0], recursive=True)  # a local or mounted filesystem needs the folder
    with fs.open_output_stream(path) as out:
        out.write(folder.name.encode())


def restore(storage_path: str | None, name: str, resume: str) -> str:
    """With a URI ``storage_path``: the folder ``resume`` names (``latest``; a folder path, maybe another
    machine's, or its URI: its name is what counts) made under ``./runs`` from ``<uri>/<folder>/driver/`` when it
    has no state file there. Returns what to resume: ``latest``, or that folder under ``./runs`` once it is there
    (``resume`` as given with a local storage, or when the storage holds no copy: the resume then fails as it
    would without a storage URI, naming the folder)."""
    if not storage.is_uri(storage_path):
        return resume
    root = storage.local_root(storage_path)
    if resume == "latest":
        if (root / f"{name}.latest").is_file():
            return resume
        latest = _latest_uri(storage_path, name)
        if not storage.exists(latest):
            return resume
        fs, path = storage.filesystem(latest)
        with fs.open_input_stream(path) as f:
            folder_name = f.read().decode().strip()
    else:
        folder_name = Path(resume.rstrip("/")).name
    folder = root / folder_name
    source = _driver_uri(storage_path, folder_name)
    if not (folder / STATE_FILE).is_file() and storage.exists(f"{source}/{STATE_FILE}"):
        fs, base = storage.filesystem(source)
        for file in RESUME_FILES:
            if storage.exists(f"{source}/{file}"):
                storage.download(fs, f"{base}/{file}", folder / file)
        if resume == "latest":
            (root / f"{name}.latest").write_text(str(folder))
        print(f"resuming: the sweep folder {folder} restored from {source}", flush=True)
    if resume == "latest" or not (folder / STATE_FILE).is_file():
        return resume
    return str(folder)


class CopyOnSave(tune.Callback):
    """Uploads the sweep folder's resume files at each save of Tune's experiment state: Tune calls
    ``get_state`` on the driver while it writes its state, before it uploads it. Holds the storage URI and the
    folder's name only (Tune pickles it with the run and restores it with a resumed one, maybe on another
    machine): the folder is ``./runs/<name>`` of the driver that runs it."""

    def __init__(self, storage_path: str, folder_name: str):
        self.storage_path, self.folder_name = storage_path, folder_name

    def get_state(self) -> None:
        """Nothing for Tune to keep: the copy is the point (see the class)."""
        upload(storage.local_root(self.storage_path) / self.folder_name, self.storage_path)
        return None


def callbacks(storage_path: str | None, folder: Path) -> list[tune.Callback]:
    """[:class:`CopyOnSave`] for a Tune run whose folder is ``folder`` (the sweep folder or a stage's folder in it)
    with a URI ``storage_path``; [] with a local one."""
    if not storage.is_uri(storage_path):
        return []
    root = storage.local_root(storage_path)
    return [CopyOnSave(storage_path, Path(folder).resolve().relative_to(root).parts[0])]
