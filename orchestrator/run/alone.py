"""A model trained alone with cross-entropy, once, and cached by what changes it: the default teacher
(:func:`ensure_teacher`) and the "student alone" rows of the pipelines."""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from orchestrator.config.schema import STUDENT_KNOBS, Config, apply_overrides
from orchestrator.data import DataBundle
from orchestrator.models import build_model
from orchestrator.models.base import split_arch
from orchestrator.run.epochs import run_epochs
from orchestrator.run.learner import Learner
from orchestrator.teacher.checkpoint import resolve_teacher, save_model_checkpoint
from orchestrator.infra.cache_dir import default_cache_dir


def training_key(cfg: Config, arch: str, epochs: int, lr: float, weights: str | None = None) -> str:
    """A short hash of everything that changes a model trained alone with CE (from ``weights``, if named)."""
    d = cfg.data
    shapes = [list(t.shape) for t in build_model(arch, 10, 1).state_dict().values()]  # the architecture's shape
    payload = {
        "arch": arch, "shapes": shapes, "epochs": epochs, "lr": lr, "seed": cfg.seed, "dataset": d.dataset, "root": d.root,
        "val_fraction": d.val_fraction, "train_subset": d.train_subset, "batch_size": d.batch_size,
        "augment": d.augment, "optimizer": cfg.train.optimizer, "weight_decay": cfg.train.weight_decay,
        "scheduler": cfg.train.scheduler, "momentum": cfg.train.momentum, **({"weights": weights} if weights else {}),
        **d.geometry_key(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def alone_config(cfg: Config, arch: str, epochs: int, lr: float, *, weights: str | None = None) -> Config:
    """``cfg`` turned into "train ``arch`` alone with CE", starting from pretrained ``weights`` if named.
    ``arch`` carries its own size knobs (``cnn_student_small[width=0.5]``, :func:`config.student_arch`);
    the config's student knobs are not applied to it."""
    name, knobs = split_arch(arch)
    return apply_overrides(
        cfg,
        {"model.student": name, "model.student_weights": weights, "distill.method": "ce", "distill.ce.weight": 1.0,
         **{f"model.{key}": knobs.get(knob) for key, knob in STUDENT_KNOBS.items()},
         "train.epochs": epochs, "train.lr": lr, "sweep.asha.grace_period": None},  # no ASHA here: any epochs
    )


def train_alone(
    cfg: Config,
    data: DataBundle,
    arch: str,
    epochs: int,
    lr: float,
    *,
    weights: str | None = None,
    label: str,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train ``arch`` with CE only, tested at the last epoch; print one progress line per epoch and pass
    each epoch's metrics to ``on_epoch``; returns (model, final metrics)."""
    trainer = Learner(alone_config(cfg, arch, epochs, lr, weights=weights), data)
    clock = [time.perf_counter()]

    def report(metrics: dict, _per_seed: list[dict]) -> None:
        print(
            f"  [{label}] epoch {metrics['epoch']}/{epochs}  train/loss {metrics['train/loss']:.4f}  "
            f"val/acc1 {metrics['val/acc1']:.4f}  ({time.perf_counter() - clock[0]:.0f} s, "
            f"{metrics['throughput/train_img_s']:.0f} img/s)",
            flush=True,
        )
        clock[0] = time.perf_counter()
        if on_epoch is not None:
            on_epoch(metrics)

    metrics = run_epochs([trainer], evaluate_test=True, on_epoch=report)
    return trainer.student, metrics


def ensure_teacher(cfg: Config, tracking_uri: str) -> str:
    """The teacher to distil from: ``teacher.checkpoint`` if given (checked), else the cached default.

    The default teacher is trained once on the full train split with all its labels (``data.train_subset``
    and ``data.labeled_fraction`` ignored: a semi-supervised run distils a teacher that saw every label, as
    the label-efficiency comparisons assume; give ``teacher.checkpoint`` for any other teacher),
    logged as an MLflow run with tag ``orchestrator.kind=teacher`` and cached under
    ``<cache>/teachers``; later sweeps reuse it.
    """
    from orchestrator.data import build_data

    if cfg.teacher.checkpoint:
        return resolve_teacher(cfg, build_data(cfg.data, cfg.seed))
    teacher_cfg = apply_overrides(cfg, {"data.train_subset": None, "data.labeled_fraction": 1.0})
    arch, epochs, lr = cfg.model.teacher, cfg.teacher.epochs, cfg.teacher.lr
    key = training_key(teacher_cfg, arch, epochs, lr, cfg.teacher.weights)
    cache = Path(cfg.teacher.cache_dir) if cfg.teacher.cache_dir else default_cache_dir() / "teachers"
    path = cache / f"{cfg.data.dataset}-{arch}-{key}.pt"
    if path.is_file():
        print(f"teacher: reusing cached {arch} ({path})", flush=True)
        return str(path)
    print(f"teacher: training {arch} once for {epochs} epochs (cached afterwards at {path})", flush=True)
    data = build_data(teacher_cfg.data, cfg.seed)
    model, metrics = _train_logged(teacher_cfg, data, arch, epochs, lr, tracking_uri, key)
    save_model_checkpoint(path, model, arch, data, metrics)  # what _train_logged logged, under the cache
    print(f"teacher: test acc1 {metrics['test/acc1']:.4f}", flush=True)
    return str(path)


def _train_logged(cfg: Config, data: DataBundle, arch: str, epochs: int, lr: float, uri: str, key: str):
    """train_alone inside an MLflow run of kind ``teacher`` (its scope: FINISHED, FAILED or KILLED)."""
    from orchestrator.infra import tracking
    client = tracking.check_connection(uri)
    experiment_id = tracking.ensure_experiment(client, "distill-teachers", uri)
    run_id = tracking.start_run(
        client, experiment_id, f"{arch}-{key}", "teacher",
        params={"arch": arch, "epochs": epochs, "lr": lr, "dataset": cfg.data.dataset, "seed": cfg.seed},
    )
    with tracking.run_scope(client, run_id):
        model, metrics = train_alone(
            cfg, data, arch, epochs, lr, weights=cfg.teacher.weights, label=f"teacher {arch}",
            on_epoch=lambda m: tracking.log_metrics(client, run_id, m, step=m["epoch"]),
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_model_checkpoint(Path(tmp) / "teacher.pt", model, arch, data, metrics)
            tracking.log_checkpoint(client, run_id, Path(tmp) / "teacher.pt", "teacher")  # runs:/<id>/teacher
    return model, metrics
