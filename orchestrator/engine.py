"""The plain-PyTorch training API every Ray Train worker calls.

``Trainer`` builds the student, the distiller, the optimiser and the loaders
from a :class:`~orchestrator.config.Config`, trains one epoch at a time,
evaluates, and saves/restores everything needed to resume. Teachers are
frozen (``eval()``, ``requires_grad_(False)``, not in the optimiser, not in
checkpoints). Under ``torch.distributed`` the student and the distiller's
trainable heads are wrapped in DDP. No Ray, no MLflow here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.atomic_files import atomic_torch_save
from orchestrator.config import Config
from orchestrator.data import DataBundle, make_loader, set_epoch
from orchestrator.distill import build_distiller
from orchestrator.models import ModelOutput
from orchestrator.models.pretrained import build_with_weights
from orchestrator.safe_load import load_tensors


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class CachedTeacherOutputs:
    """Teacher outputs precomputed on the un-augmented train split, indexed by sample index.

    logits: (N, num_classes); embedding: (N, D); source_indices: (N,) which source images the
    rows belong to (checked against the train split, so a cache never meets another split).
    """

    logits: Tensor
    embedding: Tensor
    source_indices: Tensor | None = None

    def save(self, path) -> None:
        atomic_torch_save(
            {"logits": self.logits, "embedding": self.embedding, "source_indices": self.source_indices}, path
        )

    @classmethod
    def load(cls, path) -> CachedTeacherOutputs:
        blob = load_tensors(path, "teacher-output cache")
        return cls(blob["logits"], blob["embedding"], blob.get("source_indices"))

    def check_matches(self, dataset) -> None:
        """Raise ValueError unless the rows line up with ``dataset``'s samples."""
        if self.logits.shape[0] != len(dataset):
            raise ValueError(
                f"teacher output cache holds {self.logits.shape[0]} samples but the train split has "
                f"{len(dataset)}; recompute it for this data configuration"
            )
        mine, theirs = self.source_indices, getattr(dataset, "source_indices", None)
        if mine is not None and theirs is not None and not torch.equal(mine, torch.as_tensor(theirs)):
            raise ValueError(
                "teacher output cache was computed on a different train split (another seed, subset or "
                "val_fraction); recompute it for this data configuration"
            )



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze(model: nn.Module) -> nn.Module:
    """Teacher mode: eval, no gradients (and none left over from its own training)."""
    model.eval()
    model.requires_grad_(False)
    for p in model.parameters():
        p.grad = None
    return model


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class Trainer:
    """Train one student against frozen teacher(s) with the configured objective."""

    def __init__(
        self,
        cfg: Config,
        data: DataBundle,
        teachers: Sequence[nn.Module] = (),
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        teacher_outputs: Sequence[CachedTeacherOutputs] | None = None,
    ):
        self.cfg, self.data = cfg, data
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        seed_everything(cfg.seed + rank)
        self.teachers = [freeze(t.to(self.device)) for t in teachers]
        self.teacher_outputs = list(teacher_outputs or [])
        for cache in self.teacher_outputs:
            cache.check_matches(data.train)
        self.student = build_with_weights(
            cfg.model.student, data.num_classes, data.in_channels, cfg.model.student_weights
        ).to(self.device)
        teacher_dims = [t.embedding_dim for t in self.teachers] or [c.embedding.shape[1] for c in self.teacher_outputs]
        self.distiller = build_distiller(
            cfg.distill,
            num_classes=data.num_classes,
            student_dim=self.student.embedding_dim,
            teacher_dims=teacher_dims,
            train_labels=data.train_labels,
            negatives=cfg.data.negatives,
            seed=cfg.seed,  # same on every rank; the distiller draws per-rank negative streams
        ).to(self.device)

        self._student_step = self.student
        self._distiller_step = self.distiller
        if _distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._student_step = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
            if _has_trainable(self.distiller):
                # Memory banks are kept identical by the distiller's own all_gather.
                self._distiller_step = nn.parallel.DistributedDataParallel(
                    self.distiller, device_ids=ids, broadcast_buffers=False
                )

        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.epoch = 0
        self.train_loader = make_loader(
            data.train,
            cfg.data.batch_size,
            shuffle=True,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            num_workers=cfg.data.loader_workers,
        )

    # ------------------------------------------------------------------ build

    def _build_optimizer(self) -> torch.optim.Optimizer:
        tr = self.cfg.train
        params = [p for p in list(self.student.parameters()) + list(self.distiller.parameters()) if p.requires_grad]
        if tr.optimizer == "sgd":
            return torch.optim.SGD(params, lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay, nesterov=True)
        return torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        tr = self.cfg.train
        if tr.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=tr.epochs)
        if tr.scheduler == "step":
            step = max(1, math.ceil(tr.epochs * 0.3))
            return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=step, gamma=0.1)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    # ------------------------------------------------------------------ steps

    def _teacher_forward(self, images: Tensor, indices: Tensor) -> list[ModelOutput]:
        if self.teacher_outputs:
            idx = indices.cpu()
            return [
                ModelOutput([], c.embedding[idx].to(self.device), c.logits[idx].to(self.device))
                for c in self.teacher_outputs
            ]
        with torch.no_grad():
            return [t(images) for t in self.teachers]

    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the train split; returns ``train/loss``, ``train/loss_<term>``, time, throughput."""
        self.student.train()
        self.distiller.train()
        set_epoch(self.train_loader, self.epoch)
        self.distiller.set_epoch(self.epoch)
        sums: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        for step, (images, labels, indices) in enumerate(self.train_loader):
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            indices = indices.to(self.device, non_blocking=True)
            teacher_out: list[ModelOutput] | None = None
            if self.distiller.needs_teacher:
                teacher_out = self._teacher_forward(images, indices)
            student_out = self._student_step(images)
            teacher_arg = None if teacher_out is None else (teacher_out[0] if len(teacher_out) == 1 else teacher_out)
            terms = self._distiller_step(student_out, teacher_arg, labels, indices)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) for k, v in terms.items()}
                raise NonFiniteLossError(
                    f"training loss is {float(loss.detach())} at epoch {self.epoch + 1}, step {step} (terms: {values}); "
                    f"lower train.lr (now {self.cfg.train.lr}) or the loss weights, or raise distill.crd.nce_t"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            batch = labels.shape[0]
            seen += batch
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * batch
            for name, value in terms.items():
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value.item() * batch
        elapsed = time.perf_counter() - start
        self.scheduler.step()
        self.epoch += 1
        metrics = {f"train/{k}": v / max(seen, 1) for k, v in sums.items()}
        metrics["time/epoch_s"] = elapsed
        metrics["throughput/train_img_s"] = seen * self.world_size / max(elapsed, 1e-9)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """acc1, acc5 and CE loss of the student on ``split`` ("val", "test" or "train_eval")."""
        dataset = getattr(self.data, split)
        return evaluate_model(self.student, dataset, self.cfg.data.eval_batch_size, self.device)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything needed to resume: student, distiller (heads, banks), optimiser, scheduler, epoch, RNG."""
        return {
            "epoch": self.epoch,
            "student": self.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state_to_tensors(np.random.get_state()),
                "python": random.getstate(),
            },
            "student_arch": self.cfg.model.student,
            "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels,
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.distiller.load_state_dict(state["distiller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"]["torch"].cpu())  # also from a checkpoint loaded onto a GPU
        np.random.set_state(_numpy_state_from_tensors(state["rng"]["numpy"]))
        random.setstate(state["rng"]["python"])


def _numpy_state_to_tensors(state: tuple) -> dict:
    """NumPy's RNG state as tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": (has_gauss, cached)}


def _numpy_state_from_tensors(state: dict) -> tuple:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["gauss"][0], state["gauss"][1])


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, batch_size: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1/top-5 accuracy and mean CE of ``model`` on ``dataset`` (items: image, label, index)."""
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).logits
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        count += labels.shape[0]
    model.train(was_training)
    return {"acc1": correct1 / count, "acc5": correct5 / count, "loss": loss_sum / count}


@torch.no_grad()
def compute_teacher_outputs(teacher: nn.Module, dataset, batch_size: int = 512, device="cpu") -> CachedTeacherOutputs:
    """Run a frozen teacher once over ``dataset`` (un-augmented); rows ordered by sample index."""
    freeze(teacher)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    n = len(dataset)
    logits = embedding = None
    for images, _, indices in loader:
        out = teacher(images.to(device))
        if logits is None:
            logits = torch.empty(n, out.logits.shape[1])
            embedding = torch.empty(n, out.embedding.shape[1])
        logits[indices] = out.logits.float().cpu()
        embedding[indices] = out.embedding.float().cpu()
    source = getattr(dataset, "source_indices", None)
    return CachedTeacherOutputs(logits, embedding, None if source is None else torch.as_tensor(source).clone())
