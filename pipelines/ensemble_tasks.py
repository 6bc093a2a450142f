"""The ensemble pipeline's Ray tasks: one teacher evaluated (outputs cached once), one student run trained
(reading the cached outputs or the shared view caches when they serve it)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import ray
import torch

from orchestrator.infra import tracking
from orchestrator.config.schema import from_dict, student_arch
from orchestrator.distill import registry
from pipelines.stages import numbers


def evaluate_teacher(source: str, cfg_dict: dict, cache: bool, threads: int) -> dict:
    """One teacher: its outputs on the train split cached by content if ``cache`` (the sweep's file: weights,
    split, the fields the objective reads), logits on val and test."""
    from orchestrator.data import build_data
    from orchestrator.teacher_outputs import compute_teacher_outputs
    from orchestrator.teacher_outputs import ensure_outputs
    from orchestrator.teacher.checkpoint import load_teacher

    torch.set_num_threads(threads)
    cfg = from_dict(cfg_dict)
    data = build_data(cfg.data, cfg.seed)
    model = load_teacher(source, data.num_classes, data.in_channels, data.image_size)
    start = time.perf_counter()
    path, seconds = None, None
    if cache:
        path, seconds = ensure_outputs(model, cfg, data, registry.teacher_needs(cfg.distill) | registry.OUTPUTS)
    bs = cfg.data.eval_batch_size
    val = compute_teacher_outputs(model, data.val, bs).logits
    test = compute_teacher_outputs(model, data.test, bs).logits
    return {"val_logits": val, "test_logits": test, "outputs": str(path.resolve()) if path else None,
            "outputs_s": seconds or 0.0, "computed": seconds is not None, "time_s": time.perf_counter() - start}


teacher_eval_task = ray.remote(num_cpus=1)(evaluate_teacher)


def distill(cfg_dict: dict, teachers: list[str], outputs: list[str], checkpoint: str, uri: str, run_id: str,
            register: str | None = None, data_seed: int | None = None) -> dict:
    """One student run through the training loop (:func:`orchestrator.run.epochs.run_epochs`): epochs (val each), test at
    the last, logged to MLflow run ``run_id``; then its checkpoint and model (registered and exported if named).
    Trained with seed ``cfg.seed`` on the split of ``data_seed`` (default ``cfg.seed``): the pipeline's
    students share one split and differ in their training seed.

    ``outputs``: the teachers' precomputed outputs (un-augmented split) or view caches (``data.augment``), read
    as a sweep's trial reads them (:func:`orchestrator.run.worker.outputs_for_seed`); without them, or when they
    do not serve this run, the teachers run live. The run's tag ``teacher_inputs`` says which."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from orchestrator.data import build_data
    from orchestrator.run.learner import Learner
    from orchestrator.export import config_provenance, example_batch, export_student, metadata
    from orchestrator.run.epochs import run_epochs
    from orchestrator.teacher.checkpoint import load_teacher, save_model_checkpoint
    from orchestrator.teacher_outputs import load_outputs, outputs_for_seed, teacher_inputs_tag

    cfg = from_dict(cfg_dict)
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    data = build_data(cfg.data, cfg.seed if data_seed is None else data_seed)
    uses_teacher = registry.needs_teacher(cfg.distill)
    caches = [load_outputs(p) for p in outputs] if uses_teacher else []
    inputs = outputs_for_seed(caches, cfg.seed, len(teachers), cfg.distill) if caches else []
    models = []
    if not inputs and uses_teacher:  # nothing precomputed serves this run: the teachers run live (no grad, eval)
        models = [load_teacher(t, data.num_classes, data.in_channels, data.image_size) for t in teachers]
    trainer = Learner(cfg, data, models, teacher_outputs=inputs or None)
    client = MlflowClient(tracking_uri=uri)
    used = teacher_inputs_tag({cfg.seed: inputs}) if uses_teacher else None
    if used:
        tracking.set_tags(client, run_id, {"teacher_inputs": used})
    start, epoch_s, img_s = time.perf_counter(), [], []

    def report(metrics: dict, _per_seed: list[dict]) -> None:
        epoch_s.append(metrics["time/epoch_s"])
        img_s.append(metrics["throughput/train_img_s"])
        tracking.log_metrics(client, run_id, metrics, step=metrics["epoch"])

    try:
        metrics = run_epochs([trainer], evaluate_test=True, on_epoch=report)  # test: the only look, at the last epoch
    finally:
        tracking.flush_metrics(client, run_id)  # epochs an unreachable server could not take yet
    save_model_checkpoint(Path(checkpoint), trainer.chosen, student_arch(cfg.model), data, numbers(metrics))
    tracking.log_file(client, run_id, checkpoint, "checkpoint")
    version = None
    if register:  # registered: ONNX, loadable without this package
        mlflow.set_tracking_uri(uri)
        version = tracking.log_model(run_id, trainer.chosen, "student", register, example=example_batch(data),
                                     metadata=metadata(data, False, config_provenance(cfg, teachers)))
        export_student(trainer.chosen, data, cfg.export.formats, Path(checkpoint).parent / "export", client, register, version,
                       cfg=cfg, teachers=teachers)
    else:  # runs:/<id>/student: tensors only (a teacher URI for later runs)
        tracking.log_checkpoint(client, run_id, checkpoint, "student")
    return {
        "val/acc1": metrics["val/acc1"], "test/acc1": metrics["test/acc1"], "test/acc5": metrics["test/acc5"],
        "checkpoint": checkpoint, "time_s": time.perf_counter() - start,
        "epoch_s": statistics.mean(epoch_s), "train_img_s": statistics.mean(img_s),
        "teachers_live": bool(models), "teacher_inputs": used, "registered_version": version,
    }


distill_task = ray.remote(num_cpus=1)(distill)
