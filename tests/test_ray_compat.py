"""The private Ray/Optuna internals the tool relies on (all in orchestrator/infra/ray_compat.py) still exist in
the installed versions, which are inside the tested range that pyproject.toml declares."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from orchestrator.infra import ray_compat
ROOT = Path(__file__).resolve().parents[1]


def test_every_internal_the_tool_uses_still_exists():
    missing = ray_compat.missing_internals()
    assert not missing, ("the installed Ray/Optuna changed private API(s) that resume safety or trial stops use: "
                         f"{missing}; update orchestrator/infra/ray_compat.py and its tested range")


def test_the_tested_range_is_the_one_pyproject_declares_and_holds_the_installed_versions():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["distill-orchestrator"]["tested"]
    assert declared == {k: f">={low},<{high}" for k, (low, high) in ray_compat.TESTED.items()}
    assert ray_compat.version_warnings() == []


def test_an_untested_version_is_one_warning_line(monkeypatch):
    monkeypatch.setattr(ray_compat, "version", lambda package: "9.0.0" if package == "ray" else "5.1.0")
    (line,) = ray_compat.version_warnings()
    assert line.startswith("warning: ray 9.0.0 is outside the tested range >=2.60,<2.61")


def test_only_the_adapter_uses_internals():
    found = subprocess.run(["grep", "-rln", r"_internal\|_private\|_ot_\|_schedule_trial_actor\|_temp_dir",
                            "orchestrator", "pipelines", "--include=*.py"], cwd=ROOT, capture_output=True, text=True)
    assert found.stdout.split() == ["orchestrator/infra/ray_compat.py"], found.stdout
