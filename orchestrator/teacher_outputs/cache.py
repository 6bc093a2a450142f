"""Teacher-output caches keyed by content: the teacher's weights, the data split and the fields stored; for a
view cache (``data.augment``) also the augmentation, the top-k and the training seed.

Two teachers with the same file name (``a/teacher.pt``, ``b/teacher.pt``) or two
``runs:/<id>/teacher`` URIs get different files; the same weights reached through
another path share one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from orchestrator.config.schema import Config
from orchestrator.data import DataBundle
from orchestrator.distill.registry import OUTPUTS, Needs
from orchestrator.models.base import freeze
from orchestrator.teacher_outputs.cached import compute_teacher_outputs
from orchestrator.teacher_outputs.views import META, TeacherViews, augment_key, build_views
from orchestrator.teacher.checkpoint import load_teacher
from orchestrator.infra.cache_dir import default_cache_dir

def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state_dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_key(cfg: Config) -> str:
    """A short hash of what selects the (un-augmented) train split."""
    d = cfg.data
    geometry = d.geometry_key()  # appended only when set: the keys of other configs are unchanged
    payload = json.dumps([d.dataset, d.root, d.val_fraction, d.train_subset, cfg.seed, *([geometry] if geometry else [])],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def fields_key(needs: Needs) -> str:
    """A short hash of the stored fields (sorted field names, stages in order)."""
    return hashlib.sha256(",".join([*sorted(needs.fields), *(f"stage:{s}" for s in needs.stages)]).encode()).hexdigest()[:6]


def cache_path(model: nn.Module, cfg: Config, needs: Needs = OUTPUTS) -> Path:
    """``<cache>/teacher-outputs/<weights>-<split>-<fields>.pt``."""
    fields = fields_key(needs)
    return default_cache_dir() / "teacher-outputs" / f"{weights_digest(model)[:16]}-{data_key(cfg)}-{fields}.pt"


def estimated_bytes(model: nn.Module, data: DataBundle, needs: Needs) -> int:
    """Bytes the cache of ``needs`` on ``data.train_eval`` takes (float32), from the outputs of two images."""
    sample = compute_teacher_outputs(model, Subset(data.train_eval, [0, 1]), 2, needs=needs)
    per_image = sum(t[0].numel() for t in (sample.logits, sample.embedding, *sample.features.values()) if t is not None)
    return 4 * per_image * len(data.train_eval)


RUNS_LIVE = "the teacher runs live instead"


def ensure_outputs(
    model: nn.Module, cfg: Config, data: DataBundle, needs: Needs = OUTPUTS, too_big: str = RUNS_LIVE
) -> tuple[Path | None, float | None]:
    """(the cache file of ``model``'s outputs on ``data.train_eval`` (the fields ``needs`` names), the seconds
    spent computing it now, or None when the file was there). The sweep and the pipeline both call this.
    (None, None) when the file would exceed ``teacher.cache_max_gb``: the teacher then runs live, or what the
    caller does instead, which the printed line ends with (``too_big``)."""
    path = cache_path(model, cfg, needs)
    if path.is_file():
        return path, None
    size = estimated_bytes(model, data, needs)
    if size > cfg.teacher.cache_max_gb * 2**30:
        print(f"teacher outputs for {', '.join([*sorted(needs.fields), *needs.stages])} would take {size / 2**30:.1f} GiB "
              f"(> teacher.cache_max_gb={cfg.teacher.cache_max_gb:g}): {too_big}", flush=True)
        return None, None
    start = time.perf_counter()
    compute_teacher_outputs(model, data.train_eval, cfg.data.eval_batch_size, needs=needs).save(path)
    return path, time.perf_counter() - start


def teacher_outputs_file(teacher: str, cfg: Config, data: DataBundle, needs: Needs = OUTPUTS,
                         too_big: str = RUNS_LIVE) -> Path | None:
    """The cache file of ``teacher``'s outputs on ``data.train_eval`` (the fields ``needs`` names),
    computed now if missing; None (the teacher then runs live) if it would exceed ``teacher.cache_max_gb``."""
    model = load_teacher(teacher, data.num_classes, data.in_channels, data.image_size)
    path, seconds = ensure_outputs(model, cfg, data, needs, too_big)
    if seconds is not None:
        print(f"teacher outputs for {len(data.train_eval)} training images computed once ({seconds:.1f} s) -> {path}",
              flush=True)
    return path


def views_folder(model: nn.Module, cfg: Config, data: DataBundle, needs: Needs, seed: int) -> Path:
    """``<cache>/teacher-views/<weights>-<split>-<fields>-<augmentation>-top<k>-seed<s>/`` (one folder per
    (teacher, split, fields, views of ``seed``); its epochs are files inside, added as sweeps need them)."""
    aug = hashlib.sha256(str(augment_key(data.train)).encode()).hexdigest()[:6]
    name = (f"{weights_digest(model)[:16]}-{data_key(cfg)}-{fields_key(needs)}-{aug}-top{cfg.teacher.view_topk}"
            f"-seed{seed}")
    return default_cache_dir() / "teacher-views" / name


def ensure_views(model: nn.Module, cfg: Config, data: DataBundle, needs: Needs, seeds,
                 device="cpu") -> tuple[list[Path], int]:
    """(the view caches of ``model`` for ``seeds``, one folder each holding ``train.epochs`` epochs, the number
    of epochs of views computed now, on ``device``, because they were missing)."""
    freeze(model.to(device))
    folders, built = [], 0
    for seed in seeds:
        folder = views_folder(model, cfg, data, needs, seed)
        before = TeacherViews(folder).epochs() if (folder / META).is_file() else 0
        build_views(model, data.train, seed, cfg.train.epochs, needs, folder, topk=cfg.teacher.view_topk,
                    batch_size=cfg.data.eval_batch_size, device=device)
        folders.append(folder)
        built += max(0, cfg.train.epochs - before)
    return folders, built
