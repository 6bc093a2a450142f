"""The ensemble pipeline's Ray tasks: one teacher evaluated (outputs cached once), one student run trained."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import ray
import torch

from orchestrator import tracking
from orchestrator.config import from_dict
from orchestrator.distill import registry
from pipelines.stages import numbers


URI_MARK = ":/"


@ray.remote(num_cpus=1)
def teacher_eval_task(source: str, cfg_dict: dict, outputs_path: str | None, threads: int) -> dict:
    """One teacher: outputs on the train split (once, cached), logits on val and test."""
    from orchestrator.data import build_data
    from orchestrator.engine import compute_teacher_outputs
    from orchestrator.teachers import load_teacher

    torch.set_num_threads(threads)
    cfg = from_dict(cfg_dict)
    data = build_data(cfg.data, cfg.seed)
    model = load_teacher(source, data.num_classes, data.in_channels, data.image_size)
    bs = cfg.data.eval_batch_size
    start = time.perf_counter()
    computed = False
    cached = Path(outputs_path) if outputs_path else None
    stale = cached is not None and cached.is_file() and URI_MARK not in source and \
        cached.stat().st_mtime_ns < Path(source).stat().st_mtime_ns  # the teacher was retrained since
    if cached is not None and (stale or not cached.is_file()):
        needs = registry.teacher_needs(cfg.distill) | registry.OUTPUTS  # what the objective reads
        compute_teacher_outputs(model, data.train_eval, bs, needs=needs).save(cached)  # with source indices
        computed = True
    train_s = time.perf_counter() - start
    val = compute_teacher_outputs(model, data.val, bs).logits
    test = compute_teacher_outputs(model, data.test, bs).logits
    return {"val_logits": val, "test_logits": test, "outputs_s": train_s, "computed": computed,
            "time_s": time.perf_counter() - start}


@ray.remote(num_cpus=1)
def distill_task(cfg_dict: dict, teachers: list[str], outputs: list[str], checkpoint: str, uri: str, run_id: str,
                 register: str | None = None) -> dict:
    """One student run through the training loop (:func:`orchestrator.loop.fit`): epochs (val each), test at
    the last, logged to MLflow run ``run_id``; then its checkpoint and model (registered and exported if named)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from orchestrator.data import build_data
    from orchestrator.engine import CachedTeacherOutputs, Trainer
    from orchestrator.export import example_batch, export_student
    from orchestrator.loop import fit
    from orchestrator.teachers import load_teacher, save_model_checkpoint

    cfg = from_dict(cfg_dict)
    torch.set_num_threads(cfg.train.torch_threads or cfg.train.cpus_per_worker)
    data = build_data(cfg.data, cfg.seed)
    uses_teacher = registry.needs_teacher(cfg.distill)
    caches = [CachedTeacherOutputs.load(p) for p in outputs] if uses_teacher else []
    models = []
    if not caches and uses_teacher:  # augmentation on: the teachers run live (no grad, eval)
        models = [load_teacher(t, data.num_classes, data.in_channels, data.image_size) for t in teachers]
    trainer = Trainer(cfg, data, models, teacher_outputs=caches or None)
    client = MlflowClient(tracking_uri=uri)
    start, epoch_s, img_s = time.perf_counter(), [], []

    def report(metrics: dict, _per_seed: list[dict]) -> None:
        epoch_s.append(metrics["time/epoch_s"])
        img_s.append(metrics["throughput/train_img_s"])
        tracking.log_metrics(client, run_id, metrics, step=metrics["epoch"])

    metrics = fit([trainer], evaluate_test=True, on_epoch=report)  # test: the only look, at the last epoch
    save_model_checkpoint(Path(checkpoint), trainer.chosen, cfg.model.student, data, numbers(metrics))
    tracking.log_file(client, run_id, checkpoint, "checkpoint")
    mlflow.set_tracking_uri(uri)
    version = tracking.log_model(run_id, trainer.chosen, "student", register,
                                 example=example_batch(data) if register else None)  # registered: ONNX
    if register:
        export_student(trainer.chosen, data, cfg.export.formats, Path(checkpoint).parent / "export", client, register, version)
    return {
        "val/acc1": metrics["val/acc1"], "test/acc1": metrics["test/acc1"], "test/acc5": metrics["test/acc5"],
        "checkpoint": checkpoint, "time_s": time.perf_counter() - start,
        "epoch_s": statistics.mean(epoch_s), "train_img_s": statistics.mean(img_s),
        "teachers_live": bool(models), "registered_version": version,
    }
