"""What every Ray Train worker runs: build, (resume), train epochs, evaluate, checkpoint, report.

Rank 0 logs each epoch to the trial's MLflow run *before* reporting (Tune may
stop the trial at a report) and attaches the checkpoint; every rank reports
(``ray.train.report`` is a barrier). A restarted worker group (``train.max_failures``)
resumes from the last checkpoint and does not log again the epochs the trial's
MLflow run already holds (one history, no duplicate steps). In Train's in-process mode
(``ScalingConfig(num_workers=0)``) the loop runs inside the Tune trial
process and reports to Tune directly.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import ray.train
import ray.tune
import torch

from orchestrator.config import from_dict
from orchestrator.data import build_data
from orchestrator.engine import CachedTeacherOutputs, Trainer
from orchestrator.safe_load import load_tensors
from orchestrator.teachers import atomic_torch_save, load_teacher, save_model_checkpoint

STATE_FILE = "state.pt"  # full trainer state (resume)
STUDENT_FILE = "student.pt"  # the student alone, teacher-checkpoint format (reuse, registry)


def load_teacher_outputs(path: str) -> CachedTeacherOutputs:
    return CachedTeacherOutputs.load(path)


def _report(metrics: dict, checkpoint: ray.train.Checkpoint | None, in_process: bool) -> None:
    if in_process:
        ray.tune.report(metrics, checkpoint=checkpoint)
    else:
        ray.train.report(metrics, checkpoint=checkpoint)


def _latest_checkpoint(in_process: bool) -> ray.train.Checkpoint | None:
    return ray.tune.get_checkpoint() if in_process else ray.train.get_checkpoint()


def _test_kill(epoch: int) -> None:
    """Test hook: ``DISTILL_TEST_KILL_AT_EPOCH=N`` SIGKILLs this worker after logging epoch N, before its
    checkpoint, once per ``DISTILL_TEST_KILL_MARKER`` file (created when it fires)."""
    if os.environ.get("DISTILL_TEST_KILL_AT_EPOCH") != str(epoch):
        return
    try:
        os.close(os.open(os.environ["DISTILL_TEST_KILL_MARKER"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(config: dict) -> None:
    """``config``: cfg (resolved Config as dict), teachers (paths/URIs), teacher_outputs (paths),
    in_process (bool), tracking_uri and mlflow_run_id (rank 0 logs there), data_seed (the split's
    seed; default cfg.seed)."""
    cfg = from_dict(config["cfg"])
    in_process = bool(config.get("in_process"))
    if in_process:  # inside the Tune trial; ray.train's context is not available there
        rank, world_size = 0, 1
    else:
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    # The split is seeded by the sweep's seed (data_seed), not the trial's: every trial is scored on the
    # same validation images and precomputed teacher outputs stay aligned with the train indices.
    data = build_data(cfg.data, config.get("data_seed", cfg.seed))
    outputs = [CachedTeacherOutputs.load(p) for p in config.get("teacher_outputs") or []]
    teachers = []
    if not outputs and cfg.distill.method != "ce":
        teachers = [load_teacher(t, data.num_classes, data.in_channels, data.image_size) for t in config["teachers"]]
    trainer = Trainer(
        cfg, data, teachers, device=device, rank=rank, world_size=world_size, teacher_outputs=outputs or None
    )

    checkpoint = _latest_checkpoint(in_process)
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state_dict(load_tensors(Path(folder) / STATE_FILE, "trial checkpoint"))

    client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        from orchestrator.tracking import log_metrics

        client = MlflowClient(tracking_uri=config["tracking_uri"])
        logged = max((int(m.step) for m in client.get_metric_history(config["mlflow_run_id"], "epoch")), default=0)

    while trainer.epoch < cfg.train.epochs:
        metrics = trainer.train_one_epoch()
        metrics.update({f"val/{k}": v for k, v in trainer.evaluate("val").items()})
        metrics["epoch"] = trainer.epoch
        if client is not None and trainer.epoch > logged:
            log_metrics(client, config["mlflow_run_id"], metrics, step=trainer.epoch)
        _test_kill(trainer.epoch)
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                atomic_torch_save(trainer.state_dict(), Path(folder) / STATE_FILE)
                numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
                save_model_checkpoint(Path(folder) / STUDENT_FILE, trainer.student, cfg.model.student, data, numbers)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            _report(metrics, ckpt, in_process)
