"""A confirmation job that ended before its driver was killed, while Tune's saved state still had it running
(issue #14): on resume it is not trained again (its MLflow run is FINISHED) and gives Tune what it reported
last, read back from that run (the last epoch's numbers) and from its final checkpoint (the student the
stage registers). Nothing else is accepted: a run without its last epoch's test numbers, or no checkpoint
holding the student of that epoch, is a :class:`FinishedJobError` (the job counts as failed), never an
earlier epoch's numbers or model."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from orchestrator.infra.safe_load import load_tensors
from orchestrator.run.worker import STUDENT_FILE

CHECKPOINT_PATH = "checkpoint_path"  # the result key of a checkpoint Ray Train persisted (TuneReportCallback's)
MATCHED = ("val/acc1", "test/acc1")  # what the stage reads; the final checkpoint's student must hold the same


class FinishedJobError(RuntimeError):
    """The result of a finished job cannot be read back whole (the message says what is missing)."""


def finished_job_result(client, run_id: str, epochs: int, folders: Iterable[Path]) -> dict:
    """The last report of the job whose MLflow run ``run_id`` ended FINISHED: its numbers at epoch ``epochs``
    and, as ``checkpoint_path``, the checkpoint folder among ``folders``' ``checkpoint_*`` holding that epoch's
    student."""
    metrics = last_epoch_metrics(client, run_id, epochs)
    return {**metrics, CHECKPOINT_PATH: str(final_checkpoint(folders, metrics, run_id))}


def last_epoch_metrics(client, run_id: str, epochs: int) -> dict[str, float]:
    """Every number run ``run_id`` logged at its last epoch, which must be ``epochs`` and hold ``test/acc1``."""
    last = max((int(m.step) for m in client.get_metric_history(run_id, "epoch")), default=0)
    metrics = {}
    for key in client.get_run(run_id).data.metrics:
        values = [m.value for m in client.get_metric_history(run_id, key) if int(m.step) == last]
        if values:
            metrics[key] = values[-1]
    missing = [k for k in MATCHED if k not in metrics]
    if last != epochs or missing:
        raise FinishedJobError(
            f"MLflow run {run_id} ended FINISHED before the driver was killed, but it logged epoch {last} of "
            f"{epochs}{' without ' + ', '.join(missing) if missing else ''}: its result cannot be read back; "
            "counted as failed"
        )
    return metrics


def final_checkpoint(folders: Iterable[Path], metrics: dict[str, float], run_id: str) -> Path:
    """The newest ``checkpoint_*`` folder under ``folders`` whose student file holds ``metrics``' val and test
    accuracy (only the last epoch's student holds test numbers)."""
    folders = [Path(f) for f in folders]
    found = sorted((p for folder in folders for p in folder.glob("checkpoint_*") if (p / STUDENT_FILE).is_file()),
                   key=lambda p: (p / STUDENT_FILE).stat().st_mtime, reverse=True)
    for folder in found:
        saved = load_tensors(folder / STUDENT_FILE, "student checkpoint").get("metrics", {})
        if all(isinstance(saved.get(k), (int, float)) and math.isclose(saved[k], metrics[k], abs_tol=1e-12)
               for k in MATCHED):
            return folder
    where = ", ".join(str(f) for f in folders)
    raise FinishedJobError(
        f"MLflow run {run_id} ended FINISHED before the driver was killed, but no checkpoint under {where} holds "
        f"its last epoch's student (val/acc1 {metrics['val/acc1']:.4f}, test/acc1 {metrics['test/acc1']:.4f}); "
        "an earlier one is not used; counted as failed"
    )
