"""The chosen student: copied into the sweep folder, logged and registered in MLflow, its version tagged
with the headline numbers, exported (ONNX / TorchScript)."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.sweep.confirm import outcome
from orchestrator.infra import tracking
from orchestrator.config.schema import Config
from orchestrator.data import DataBundle
from orchestrator.export import config_provenance, example_batch, export_student, metadata
from orchestrator.sweep.summary import version_tags


def register_student(client, parent_id: str, cfg: Config, data: DataBundle, student, student_path: Path,
                     summary: dict, verdict: outcome.Verdict, exp_dir: Path):
    """Returns the registered model version (None when the store has no registry)."""
    shutil.copy(student_path, exp_dir / "best_student.pt")
    tracking.log_file(client, parent_id, exp_dir / "best_student.pt")
    version = tracking.log_model(parent_id, student, "best_student", cfg.tracking.registered_model,
                                 example=example_batch(data), metadata=metadata(data, False, config_provenance(cfg)))
    if version:
        tracking.tag_model_version(client, cfg.tracking.registered_model, version, version_tags(summary, verdict))
    export_student(student, data, cfg.export.formats, exp_dir / "export", client, cfg.tracking.registered_model, version,
                   cfg=cfg)
    return version
