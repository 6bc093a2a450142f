"""The sweep folder: ``<storage>/<name>-<time>``, or the one ``--resume`` names, and its state file
(the MLflow run ids a resume reopens)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

STATE_FILE = "orchestrator-sweep.json"


def open_folder(storage: Path, name: str, resume: str | None) -> tuple[Path, dict]:
    """A fresh ``<storage>/<name>-<time>`` folder, or the one being resumed (with its saved state)."""
    latest = storage / f"{name}.latest"
    if resume:
        path = Path(latest.read_text().strip()) if resume == "latest" and latest.is_file() else Path(resume)
        if resume == "latest" and not latest.is_file():
            raise FileNotFoundError(f"no earlier sweep named '{name}' under {storage} to resume")
        state_file = path / STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"{path} is not a sweep folder of this tool (no {STATE_FILE}); nothing to resume")
        return path.resolve(), json.loads(state_file.read_text())
    path = storage / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=False)
    latest.write_text(str(path))
    return path, {}


def write_state(folder: Path, state: dict) -> None:
    """The state file of ``folder`` (run ids of the parent and of each stage)."""
    write_json(folder / STATE_FILE, state)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
