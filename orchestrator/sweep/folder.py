"""The sweep folder: ``<storage>/<name>-<time>``, or the one ``--resume`` names; its state file (the
MLflow run ids a resume reopens) and what a resume restores: the resolved config (``config.yaml``), the
search space (``search_space.yaml``) and the Optuna study (``optuna-journal.log``, Optuna's own journal
storage: ``optuna-dashboard optuna-journal.log`` opens it)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

from orchestrator.infra.atomic_files import write_json_atomic

STATE_FILE = "orchestrator-sweep.json"
CONFIG_FILE = "config.yaml"
SPACE_FILE = "search_space.yaml"
OPTUNA_JOURNAL = "optuna-journal.log"
IGNORED_ON_RESUME = ("sweep.resume",)  # set by --resume itself


def find_folder(storage: Path, name: str, resume: str) -> Path:
    """The folder ``--resume`` names (``latest``: the last sweep of ``name`` under ``storage``)."""
    latest = storage / f"{name}.latest"
    if resume == "latest" and not latest.is_file():
        raise FileNotFoundError(f"no earlier sweep named '{name}' under {storage} to resume")
    path = Path(latest.read_text().strip()) if resume == "latest" else Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a sweep folder of this tool (no {STATE_FILE}); nothing to resume")
    return path.resolve()


def differing_keys(saved: dict, given: dict) -> list[str]:
    """Dotted keys whose values differ between two flattened configs (``sweep.resume`` left out)."""
    keys = sorted(set(saved) | set(given))
    return [k for k in keys if k not in IGNORED_ON_RESUME and saved.get(k) != given.get(k)]


def open_folder(storage: Path, name: str, resume: str | None) -> tuple[Path, dict]:
    """A fresh ``<storage>/<name>-<time>`` folder, or the one being resumed (with its saved state)."""
    if resume:
        path = find_folder(storage, name, resume)
        return path, json.loads((path / STATE_FILE).read_text())
    latest = storage / f"{name}.latest"
    path = storage / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=False)
    latest.write_text(str(path))
    return path, {}


def save_inputs(folder: Path, config_yaml: str, space_file: Path) -> None:
    """The resolved config (every start) and, once, a copy of the search space's file."""
    (folder / CONFIG_FILE).write_text(config_yaml)
    if not (folder / SPACE_FILE).is_file():
        shutil.copyfile(space_file, folder / SPACE_FILE)


def space_changed(folder: Path, space_file: Path) -> bool:
    """Whether the search space's file differs from the copy the sweep in ``folder`` started with."""
    saved = folder / SPACE_FILE
    return saved.is_file() and saved.read_text() != space_file.read_text()


def optuna_storage(folder: Path, fresh: bool):
    """The Optuna journal of ``folder`` (``fresh``: an earlier journal that no Tune state refers to is removed)."""
    from optuna.storages import JournalStorage

    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna < 4
        from optuna.storages import JournalFileStorage as JournalFileBackend
    path = folder / OPTUNA_JOURNAL
    if fresh:
        path.unlink(missing_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def record_state(folder: Path, state: dict, **run_ids: str) -> None:
    """Add ``run_ids`` (the parent's, a stage's) to ``state``, the sweep's whole state as :func:`open_folder`
    returned it, and write all of it to the state file, atomically: a driver killed while writing leaves the
    previous file whole. Never a part of the state: a file that lost the parent's id made the next
    ``--resume`` open a second parent and leave the first RUNNING (issue #14)."""
    state.update(run_ids)
    write_json_atomic(folder / STATE_FILE, state)
