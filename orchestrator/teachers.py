"""Teacher checkpoints (file path or MLflow model URI), training a model once, caching.

A checkpoint file is a dict ``{"arch", "num_classes", "in_channels", "dataset",
"state_dict", "metrics"}`` written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from orchestrator.config import Config, apply_overrides
from orchestrator.data import DataBundle
from orchestrator.engine import Trainer, freeze
from orchestrator.models import build_model
from orchestrator.safe_load import UnsafeFileError, load_tensors

URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "file://")


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing or does not fit the data/model configuration."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill-orchestrator"))


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_checkpoint(path: Path, model: nn.Module, arch: str, data: DataBundle, metrics: dict) -> None:
    atomic_torch_save(
        {
            "arch": arch,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "dataset": data.name,
            "state_dict": model.state_dict(),
            "metrics": dict(metrics),
        },
        path,
    )


def load_model_checkpoint(path: str | Path, num_classes: int, in_channels: int) -> nn.Module:
    """Rebuild a model from a checkpoint file and check it fits ``num_classes``/``in_channels``."""
    path = Path(path)
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint '{path}' does not exist; give teacher.checkpoint=<file or MLflow URI>")
    try:
        ckpt = load_tensors(path, "teacher checkpoint")
    except UnsafeFileError as exc:
        raise TeacherCheckpointError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise TeacherCheckpointError(f"teacher checkpoint '{path}' cannot be read ({exc}); is it a checkpoint written by this tool?") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise TeacherCheckpointError(f"teacher checkpoint '{path}' lacks 'arch'/'state_dict'; write it with this tool's teacher training")
    if ckpt["num_classes"] != num_classes or ckpt["in_channels"] != in_channels:
        raise TeacherCheckpointError(
            f"teacher checkpoint '{path}' was trained for {ckpt['num_classes']} classes and {ckpt['in_channels']} "
            f"input channels (dataset {ckpt.get('dataset')}); this run's data has {num_classes} classes and "
            f"{in_channels} channels. Use a teacher trained on this dataset, or drop teacher.checkpoint to train one."
        )
    model = build_model(ckpt["arch"], num_classes, in_channels)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise TeacherCheckpointError(f"teacher checkpoint '{path}' does not fit architecture '{ckpt['arch']}': {exc}") from exc
    return model


def load_teacher(source: str, num_classes: int, in_channels: int, image_size: int = 28) -> nn.Module:
    """A frozen teacher from a checkpoint path or an MLflow model URI (``runs:/...``, ``models:/...``)."""
    if source.startswith(URI_SCHEMES):
        import mlflow.pytorch  # only needed for URIs

        try:
            model = mlflow.pytorch.load_model(source, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise TeacherCheckpointError(f"cannot load teacher from MLflow URI '{source}': {exc}") from exc
        _check_outputs(model, source, num_classes, in_channels, image_size)
    else:
        model = load_model_checkpoint(source, num_classes, in_channels)
    return freeze(model)


def _check_outputs(model: nn.Module, source: str, num_classes: int, in_channels: int, image_size: int) -> None:
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, in_channels, image_size, image_size))
        logits = out.logits
    except Exception as exc:  # noqa: BLE001
        raise TeacherCheckpointError(
            f"teacher '{source}' does not accept {in_channels}x{image_size}x{image_size} images or does not return "
            f"ModelOutput: {exc}"
        ) from exc
    if logits.shape[1] != num_classes:
        raise TeacherCheckpointError(f"teacher '{source}' predicts {logits.shape[1]} classes; the data has {num_classes}")


def training_key(cfg: Config, arch: str, epochs: int, lr: float) -> str:
    """A short hash of everything that changes a model trained alone with CE."""
    d = cfg.data
    shapes = [list(t.shape) for t in build_model(arch, 10, 1).state_dict().values()]  # the architecture's shape
    payload = {
        "arch": arch, "shapes": shapes, "epochs": epochs, "lr": lr, "seed": cfg.seed, "dataset": d.dataset, "root": d.root,
        "val_fraction": d.val_fraction, "train_subset": d.train_subset, "batch_size": d.batch_size,
        "augment": d.augment, "optimizer": cfg.train.optimizer, "weight_decay": cfg.train.weight_decay,
        "scheduler": cfg.train.scheduler, "momentum": cfg.train.momentum,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def alone_config(cfg: Config, arch: str, epochs: int, lr: float) -> Config:
    """``cfg`` turned into "train ``arch`` alone with CE"."""
    return apply_overrides(
        cfg,
        {"model.student": arch, "distill.method": "ce", "distill.gamma": 1.0, "train.epochs": epochs, "train.lr": lr},
    )


def train_alone(
    cfg: Config,
    data: DataBundle,
    arch: str,
    epochs: int,
    lr: float,
    *,
    label: str,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``arch`` with CE only; print one progress line per epoch; returns (model, final metrics)."""
    trainer = Trainer(alone_config(cfg, arch, epochs, lr), data)
    metrics: dict = {}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        metrics = trainer.train_one_epoch()
        val = trainer.evaluate("val")
        metrics.update({f"val/{k}": v for k, v in val.items()})
        print(
            f"  [{label}] epoch {epoch}/{epochs}  train/loss {metrics['train/loss']:.4f}  "
            f"val/acc1 {val['acc1']:.4f}  ({time.perf_counter() - start:.0f} s, "
            f"{metrics['throughput/train_img_s']:.0f} img/s)",
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    test = trainer.evaluate("test")
    metrics.update({f"test/{k}": v for k, v in test.items()})
    return trainer.student, metrics


def ensure_teacher(cfg: Config, tracking_uri: str) -> str:
    """The teacher to distil from: ``teacher.checkpoint`` if given (checked), else the cached default.

    The default teacher is trained once on the full train split (``data.train_subset`` ignored),
    logged as an MLflow run with tag ``orchestrator.kind=teacher`` and cached under
    ``<cache>/teachers``; later sweeps reuse it.
    """
    from orchestrator.data import build_data

    if cfg.teacher.checkpoint:
        data = build_data(cfg.data, cfg.seed)
        load_teacher(cfg.teacher.checkpoint, data.num_classes, data.in_channels, data.image_size)
        return cfg.teacher.checkpoint
    teacher_cfg = apply_overrides(cfg, {"data.train_subset": None})
    arch, epochs, lr = cfg.model.teacher, cfg.teacher.epochs, cfg.teacher.lr
    key = training_key(teacher_cfg, arch, epochs, lr)
    cache = Path(cfg.teacher.cache_dir) if cfg.teacher.cache_dir else default_cache_dir() / "teachers"
    path = cache / f"{cfg.data.dataset}-{arch}-{key}.pt"
    if path.is_file():
        print(f"teacher: reusing cached {arch} ({path})", flush=True)
        return str(path)
    print(f"teacher: training {arch} once for {epochs} epochs (cached afterwards at {path})", flush=True)
    data = build_data(teacher_cfg.data, cfg.seed)
    model, metrics = _train_logged(teacher_cfg, data, arch, epochs, lr, tracking_uri, key)
    save_model_checkpoint(path, model, arch, data, metrics)
    print(f"teacher: test acc1 {metrics['test/acc1']:.4f}", flush=True)
    return str(path)


def _train_logged(cfg: Config, data: DataBundle, arch: str, epochs: int, lr: float, uri: str, key: str):
    """train_alone inside an MLflow run of kind ``teacher`` (closed FAILED/KILLED on error)."""
    from orchestrator import tracking

    client = tracking.check_connection(uri)
    experiment_id = tracking.ensure_experiment(client, "distill-teachers", uri)
    run_id = tracking.start_run(
        client, experiment_id, f"{arch}-{key}", "teacher",
        params={"arch": arch, "epochs": epochs, "lr": lr, "dataset": cfg.data.dataset, "seed": cfg.seed},
    )
    status = "FAILED"
    try:
        model, metrics = train_alone(
            cfg, data, arch, epochs, lr, label=f"teacher {arch}",
            on_epoch=lambda epoch, m: tracking.log_metrics(client, run_id, m, step=epoch),
        )
        tracking.log_metrics(client, run_id, {k: v for k, v in metrics.items() if k.startswith("test/")}, step=epochs)
        tracking.log_model(run_id, model, "teacher")
        status = "FINISHED"
        return model, metrics
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(client, run_id, status)


def baseline_metrics(cfg: Config) -> dict:
    """Test/val metrics of the student trained alone (CE) for ``train.epochs`` at ``train.lr``; cached."""
    from orchestrator.data import build_data

    arch, epochs, lr = cfg.model.student, cfg.train.epochs, cfg.train.lr
    path = default_cache_dir() / "baselines" / f"{cfg.data.dataset}-{arch}-{training_key(cfg, arch, epochs, lr)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = build_data(cfg.data, cfg.seed)
    _, metrics = train_alone(cfg, data, arch, epochs, lr, label=f"student alone {arch}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    return metrics
