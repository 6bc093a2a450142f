"""What every Ray Train worker runs: build, (resume), train epochs, evaluate, checkpoint, report.

Rank 0 logs each epoch to the trial's MLflow run *before* reporting (Tune may
stop the trial at a report) and attaches the checkpoint; every rank reports
(``ray.train.report`` is a barrier). A restarted worker group (``train.max_failures``)
resumes from the last checkpoint and does not log again the epochs the trial's
MLflow run already holds (one history, no duplicate steps). In Train's in-process mode
(``ScalingConfig(num_workers=0)``) the loop runs inside the calling process; inside a
Tune trial it reports to Tune directly. Launched by :func:`orchestrator.run.launcher.launch`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import ray.train
import ray.tune
import torch

from orchestrator.config.schema import from_dict, student_arch
from orchestrator.data import build_data
from orchestrator.data.common import DatasetNotFoundError
from orchestrator.distill import registry
from orchestrator.run.learner import Learner
from orchestrator.run.epochs import run_epochs
from orchestrator.infra.safe_load import load_tensors
from orchestrator.infra.storage import fetch_under
from orchestrator.infra.atomic_files import atomic_torch_save
from orchestrator.teacher_outputs import load_outputs, outputs_for_seed, teacher_inputs_tag
from orchestrator.teacher.checkpoint import load_teacher, save_model_checkpoint

STATE_FILE = "state.pt"  # full trainer state (resume)
STUDENT_FILE = "student.pt"  # the student alone, teacher-checkpoint format (reuse, registry)


class StorageFullError(OSError):
    """A checkpoint could not be written: no space left (the message says where and what is kept)."""


@contextlib.contextmanager
def disk_full_is_clear(epoch: int) -> Iterator[None]:
    """ENOSPC/EDQUOT while writing or persisting epoch ``epoch``'s checkpoint -> one StorageFullError. Nothing
    half-written is trusted: files are renamed into place when complete (atomic_files) and Ray registers a
    checkpoint only once its copy to the storage path has finished, so a resume starts from the last whole one."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and "No space left" not in str(exc):
            raise
        raise StorageFullError(
            errno.ENOSPC, f"no space left on device while saving the checkpoint of epoch {epoch} ({exc}); free space "
            "under sweep.storage_path (and the temp folder) or point it elsewhere, then --resume: it starts from "
            "the last complete checkpoint",
        ) from exc


def data_on_this_node(cfg, seed: int):
    """``build_data`` on the node this worker runs on; a dataset missing there is a DatasetNotFoundError naming
    the node (each node provisions its own data: ``python -m orchestrator.data.provision``)."""
    try:
        return build_data(cfg.data, seed)
    except DatasetNotFoundError as exc:
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "?"
        raise DatasetNotFoundError(
            exc.dataset, [f"{', '.join(exc.looked_in)} on Ray node {node} (host {socket.gethostname()})"],
            f"{exc.how_to_get} on that node (every node reads its own copy of the data)") from None


def run_worker(config: dict) -> None:
    """``config``: cfg (resolved Config as dict), seeds (training seeds; default [cfg.seed]), teachers
    (paths/URIs), teacher_outputs (paths: output files, or view cache folders per (teacher, seed)), inputs_uri
    (teachers and outputs under this storage URI are downloaded once per node), in_process (bool), in_tune (reports go to Tune; default true),
    tracking_uri and mlflow_run_id (rank 0 logs there), data_seed (the split's seed; default cfg.seed),
    evaluate_test (add ``test/*`` at the last epoch), report_extra (metrics added to every report, not logged:
    the student's ``cost/*``, logged once by the trial), checkpoint (a Train checkpoint every epoch; default
    true), save_student (a file rank 0 writes the first seed's student to at the end).

    With several seeds one student is trained per seed, epoch by epoch (:func:`orchestrator.run.epochs.run_epochs`);
    the metrics reported (and seen by Tune/ASHA) are their means, and each seed's are logged as
    ``seed<s>/<metric>``.
    """
    cfg = from_dict(config["cfg"])
    seeds = [int(s) for s in config.get("seeds") or [cfg.seed]]
    in_process = bool(config.get("in_process"))
    via_tune = in_process and config.get("in_tune", True)  # in-process inside a Tune trial: Tune's API
    if in_process:  # ray.train's context is not available there
        rank, world_size = 0, 1
    else:
        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    # The split is seeded by the sweep's seed (data_seed), not the training seed: every trial is scored on
    # the same validation images and precomputed teacher outputs stay aligned with the train indices.
    data = data_on_this_node(cfg, config.get("data_seed", cfg.seed))
    shared = config.get("inputs_uri") or ""  # a storage URI: the driver's files, downloaded once per node
    caches = [load_outputs(p) for p in fetch_under(config.get("teacher_outputs") or [], shared)]
    inputs = {seed: outputs_for_seed(caches, seed, len(config.get("teachers") or []), cfg.distill) for seed in seeds}
    teachers = []
    if not all(inputs.values()) and registry.needs_teacher(cfg.distill):
        if config.get("tracking_uri"):  # runs:/ and models:/ teachers resolve against the sweep's store
            import mlflow

            mlflow.set_tracking_uri(config["tracking_uri"])
        teachers = [load_teacher(t, data.num_classes, data.in_channels, data.image_size)
                    for t in fetch_under(config["teachers"], shared)]
    trainers = [
        Learner(replace(cfg, seed=seed), data, [] if inputs[seed] else teachers, device=device, rank=rank,
                world_size=world_size, teacher_outputs=inputs[seed] or None)
        for seed in seeds
    ]

    checkpoint = ray.tune.get_checkpoint() if via_tune else ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_tensors(Path(folder) / STATE_FILE, "trial checkpoint")
        for trainer, trainer_state in zip(trainers, state["trainers"], strict=True):
            trainer.load_state_dict(trainer_state)

    client = None
    if rank == 0 and config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        from orchestrator.infra.tracking import flush_metrics, log_metrics, set_tags

        client = MlflowClient(tracking_uri=config["tracking_uri"])
        logged = max((int(m.step) for m in client.get_metric_history(config["mlflow_run_id"], "epoch")), default=0)
        if not logged and registry.needs_teacher(cfg.distill):
            with contextlib.suppress(Exception):  # informative only: never fail a trial for it
                set_tags(client, config["mlflow_run_id"], {"teacher_inputs": teacher_inputs_tag(inputs)})

    extra = dict(config.get("report_extra") or {})  # constants reported with every epoch (the student's cost/*)

    def report(metrics: dict, per_seed: list[dict]) -> None:
        epoch = metrics["epoch"]
        if client is not None and epoch > logged:
            log_metrics(client, config["mlflow_run_id"], metrics, step=epoch)
        with tempfile.TemporaryDirectory() as folder, disk_full_is_clear(epoch):
            ckpt = None
            if rank == 0 and config.get("checkpoint", True):
                atomic_torch_save({"seeds": seeds, "trainers": [t.state_dict() for t in trainers]},
                                  Path(folder) / STATE_FILE)
                for seed, trainer, m in zip(seeds, trainers, per_seed):
                    numbers = {k: v for k, v in m.items() if isinstance(v, (int, float))}
                    save_model_checkpoint(Path(folder) / student_file(seed, seeds), trainer.chosen,
                                          student_arch(cfg.model), data, numbers)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            (ray.tune.report if via_tune else ray.train.report)({**metrics, **extra}, checkpoint=ckpt)

    try:
        metrics = run_epochs(trainers, evaluate_test=config.get("evaluate_test", False), on_epoch=report)
    finally:  # also when Tune stops the trial at a report: what the server could not take yet is sent now
        if client is not None:
            flush_metrics(client, config["mlflow_run_id"])
    if rank == 0 and config.get("save_student"):
        save_model_checkpoint(Path(config["save_student"]), trainers[0].student, student_arch(cfg.model), data, metrics)


def student_file(seed: int, seeds: list[int]) -> str:
    """The checkpoint file of the student trained with ``seed`` (the first seed's is STUDENT_FILE)."""
    return STUDENT_FILE if seed == seeds[0] else f"student-seed{seed}.pt"
