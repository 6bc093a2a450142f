"""The plain-PyTorch training API every Ray Train worker calls.

``Learner`` builds the student, the objective, the optimiser and the loaders
from a :class:`~orchestrator.config.schema.Config`, trains one epoch at a time,
evaluates, and saves/restores everything needed to resume. Teachers are
frozen (``eval()``, ``requires_grad_(False)``, not in the optimiser, not in
checkpoints). Under ``torch.distributed`` the student and the objective's
trainable heads are wrapped in DDP. No Ray, no MLflow here.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.config.schema import Config, student_arch
from orchestrator.data import UNLABELLED, DataBundle, make_loader, set_epoch
from orchestrator.distill import build_objective, registry
from orchestrator.distill.base import split_views
from orchestrator.models import ModelOutput
from orchestrator.models.base import Shapes, freeze, probe_shapes
from orchestrator.models.pretrained import build_with_weights
from orchestrator.run.step_timer import StepTimer
from orchestrator.teacher_outputs import CachedTeacherOutputs, TeacherViews


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def rng_state(cuda: torch.device | None = None) -> dict:
    """The process RNG state: Python, NumPy, torch CPU and (``cuda``) that CUDA device's generator."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if cuda is not None:
        state["cuda"] = torch.cuda.get_rng_state(cuda)
    return state


def set_rng_state(state: dict, cuda: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if cuda is not None and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), cuda)


def seeded_rng_state(seed: int, cuda: torch.device | None = None) -> dict:
    """The RNG state ``seed`` gives (as ``random.seed``, ``np.random.seed``, ``torch.manual_seed`` would set it
    for the CPU and the ``cuda`` device), without changing the process's own."""
    outer = rng_state(cuda)
    try:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)
        if cuda is not None:
            with torch.cuda.device(cuda):
                torch.cuda.manual_seed(seed)
        return rng_state(cuda)
    finally:
        set_rng_state(outer, cuda)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class Learner:
    """Train one student against frozen teacher(s) with the configured objective.

    ``step_timer``: a :class:`~orchestrator.run.step_timer.StepTimer` that times the phases of every batch step
    (None, the default: untimed; the result is the same either way)."""

    def __init__(
        self,
        cfg: Config,
        data: DataBundle,
        teachers: Sequence[nn.Module] = (),
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        teacher_outputs: Sequence[CachedTeacherOutputs | TeacherViews] | None = None,
    ):
        """``teacher_outputs``: precomputed teacher outputs instead of ``teachers``: on the un-augmented train
        split (:class:`CachedTeacherOutputs`), or per view of the augmented one (:class:`TeacherViews`, which
        must hold this seed's views for every epoch; refused, naming the difference, otherwise)."""
        self.cfg, self.data = cfg, data
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.step_timer: StepTimer | None = None
        self._cuda = None if self.device.type != "cuda" else torch.device(
            "cuda", torch.cuda.current_device() if self.device.index is None else self.device.index)
        self._rng = seeded_rng_state(cfg.seed + rank, self._cuda)  # this Learner's own stream (see _own_rng)
        with self._own_rng():
            self._build(cfg, data, teachers, teacher_outputs)

    def _build(self, cfg: Config, data: DataBundle, teachers: Sequence[nn.Module],
               teacher_outputs: Sequence[CachedTeacherOutputs | TeacherViews] | None) -> None:
        self.teachers = [freeze(t.to(self.device)) for t in teachers]
        self.teacher_outputs = list(teacher_outputs or [])
        for cache in self.teacher_outputs:
            if isinstance(cache, TeacherViews):  # (pre-stage epochs beyond train.epochs: refused when read)
                cache.check_matches(data.train, cfg.seed, cfg.train.epochs, registry.teacher_needs(cfg.distill))
            else:
                cache.check_matches(data.train)
        self.student = build_with_weights(
            student_arch(cfg.model), data.num_classes, data.in_channels, cfg.model.student_weights
        ).to(self.device)
        self.objective = build_objective(
            cfg.distill,
            num_classes=data.num_classes,
            student=self._shapes(self.student, data),
            teachers=[self._shapes(t, data) for t in self.teachers] or [c.shapes() for c in self.teacher_outputs],
            train_labels=data.train_labels,
            seed=cfg.seed,  # same on every rank; terms draw per-rank negative streams
            make_student=lambda: build_with_weights(
                student_arch(cfg.model), data.num_classes, data.in_channels, cfg.model.student_weights),
        ).to(self.device)
        self.chosen_name = "student"
        self.extra_views = self._extra_views()
        self._loader_epoch = 0  # the epoch whose views the loader gives now (what a view cache is read at)

        self._student_step = self.student
        self._objective_step = self.objective
        if _distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._student_step = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
            if _has_trainable(self.objective):
                # Memory banks are kept identical by the CRD term's own all_gather.
                self._objective_step = nn.parallel.DistributedDataParallel(
                    self.objective, device_ids=ids, broadcast_buffers=False,
                    find_unused_parameters=self.objective.pre_stage_length > 0,  # a pre-stage trains some parts only
                )

        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()
        self.epoch = 0
        self.train_loader = make_loader(
            data.train,
            cfg.data.batch_size,
            shuffle=True,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=cfg.data.loader_workers,
            pool=self._labelled_pool(),
        )

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with this Learner's RNG stream (Python, NumPy, torch CPU, its CUDA device), seeded by
        ``seed + rank``; the process's RNG state is restored after, so a Learner never changes it and several
        Trainers in one process (one per seed) each draw from their own stream."""
        outer = rng_state(self._cuda)
        set_rng_state(self._rng, self._cuda)
        try:
            yield
        finally:
            self._rng = rng_state(self._cuda)
            set_rng_state(outer, self._cuda)

    # ------------------------------------------------------------------ build

    def _labelled_pool(self) -> Tensor | None:
        """The labelled training indices when labels are hidden and every enabled term reads labels (the student
        alone, DKD, ...): batches then hold labelled images only, as many steps per epoch as on the whole split.
        None otherwise (every image is drawn; label-free terms read the unlabelled ones)."""
        labels, terms = self.data.train_labels, registry.method_terms(self.cfg.distill.method)
        if not bool((labels == UNLABELLED).any()) or registry.label_readers(self.cfg.distill) != list(terms):
            return None
        return torch.nonzero(labels != UNLABELLED).flatten()

    def _extra_views(self) -> int:
        """How many further augmentations of each batch the student runs on: ``Needs.student_views`` - 1 when an
        enabled term asks for more views (SupCon) and the train split has keyed views (``data.augment`` on an
        in-memory dataset); 0 otherwise (such a term then gets the one view)."""
        if not registry.view_readers(self.cfg.distill) or not getattr(self.data.train, "keyed_views", False):
            return 0
        return registry.teacher_needs(self.cfg.distill).student_views - 1

    def _shapes(self, model: nn.Module, data: DataBundle) -> Shapes:
        """The model's embedding size, and its stage shapes when an enabled term reads features (one probe)."""
        if not registry.teacher_needs(self.cfg.distill).stages:
            return Shapes(int(model.embedding_dim))
        return probe_shapes(model, data.in_channels, data.image_size, self.device)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        tr = self.cfg.train
        params = [p for p in list(self.student.parameters()) + list(self.objective.parameters()) if p.requires_grad]
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
            return [c.rows(idx, self.device, self._loader_epoch) for c in self.teacher_outputs]
        with torch.no_grad():
            return [t(images) for t in self.teachers]

    def _student_forward(self, images: Tensor, indices: Tensor, epoch: int
                         ) -> tuple[ModelOutput, tuple[ModelOutput, ...], tuple[Tensor, ...]]:
        """The student's outputs on the batch, and on its ``extra_views`` further views (with those views' images):
        the same images (dataset positions ``indices``, on the CPU) augmented by views 1, 2, ... of the view
        stream at ``(seed, epoch)``. All views go through one forward, as SupContrast's training script does
        (one DDP forward per step; BatchNorm normalises over every view of the batch)."""
        if not self.extra_views:
            return self._student_step(images), (), ()
        train = self.data.train
        more = tuple(train.view_images(self.cfg.seed, epoch, indices, view).to(self.device, non_blocking=True)
                     for view in range(1, self.extra_views + 1))
        first, *rest = split_views(self._student_step(torch.cat([images, *more])), 1 + self.extra_views)
        return first, tuple(rest), more

    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the train split; returns ``train/loss``, ``train/loss_<term>``, time, throughput.

        Before the first epoch, the objective's pre-stage epochs (if a term declares one) are run with
        their own optimiser (same settings, constant lr); their means come back as ``prestage/*``.
        """
        with self._own_rng():
            metrics = self._pre_stage() if self.epoch == 0 and self.objective.pre_stage_length else {}
            self.objective.set_epoch(self.epoch)
            sums, seen, elapsed = self._pass(self.epoch, self.optimizer, None)
        self.scheduler.step()
        self.epoch += 1
        metrics.update({f"train/{k}": v / max(seen, 1) for k, v in sums.items()})
        metrics["time/epoch_s"] = elapsed
        metrics["throughput/train_img_s"] = seen * self.world_size / max(elapsed, 1e-9)
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        return metrics

    def _pre_stage(self) -> dict[str, float]:
        """The pre-stage: ``objective.pre_stage_length`` passes over the train split (data order of epochs 0, 1, ...)."""
        optimizer = self._build_optimizer()
        totals: dict[str, float] = {}
        seen_all, elapsed_all = 0, 0.0
        for epoch in range(self.objective.pre_stage_length):
            sums, seen, elapsed = self._pass(epoch, optimizer, epoch)
            seen_all, elapsed_all = seen_all + seen, elapsed_all + elapsed
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + v
        out = {f"prestage/{k}": v / max(seen_all, 1) for k, v in totals.items()}
        out.update({"prestage/epochs": self.objective.pre_stage_length, "time/prestage_s": elapsed_all})
        return out

    def _pass(self, epoch: int, optimizer: torch.optim.Optimizer, pre_stage_epoch: int | None):
        """One pass over the train split in epoch ``epoch``'s order, stepping ``optimizer`` on the objective's
        loss (its pre-stage losses when ``pre_stage_epoch`` is set); returns (per-term sums, images, seconds)."""
        self.student.train()
        self.objective.train()
        set_epoch(self.train_loader, epoch)
        self._loader_epoch = epoch
        sums: dict[str, float] = {}
        timer = self.step_timer
        lap = _untimed if timer is None else timer.lap
        seen, start = 0, time.perf_counter()
        if timer is not None:
            timer.start()
        for step, (images, labels, positions) in enumerate(self.train_loader):
            lap("loader")
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            indices = positions.to(self.device, non_blocking=True)
            lap("to_device")
            teacher_out = self._teacher_forward(images, indices) if self.objective.needs_teacher else []
            lap("teacher")
            student_out, views, view_images = self._student_forward(images, positions, epoch)
            lap("student")
            more = {"images": images, "student_views": views, "view_images": view_images}
            if pre_stage_epoch is None:
                terms = self._objective_step(student_out, teacher_out, labels, indices, **more)
            else:
                terms = self._objective_step(student_out, teacher_out, labels, indices, pre_stage_epoch=pre_stage_epoch,
                                             **more)
            loss = sum(terms.values())
            lap("objective")
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) for k, v in terms.items()}
                stage = f"pre-stage epoch {pre_stage_epoch + 1}" if pre_stage_epoch is not None else f"epoch {epoch + 1}"
                raise NonFiniteLossError(
                    f"training loss is {float(loss.detach())} at {stage}, step {step} (terms: {values}); "
                    f"lower train.lr (now {self.cfg.train.lr}) or the loss weights, or raise distill.crd.nce_t"
                )
            lap("check")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lap("backward")
            optimizer.step()
            lap("optimizer")
            batch = labels.shape[0]
            seen += batch
            sums["loss"] = sums.get("loss", 0.0) + loss.item() * batch
            for name, value in terms.items():
                sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + value.item() * batch
            lap("bookkeeping")
        return sums, seen, time.perf_counter() - start

    def networks(self) -> dict[str, nn.Module]:
        """The student and the networks the objective trains with it (peers), by name."""
        return {"student": self.student, **self.objective.networks()}

    @property
    def chosen(self) -> nn.Module:
        """The trial's student: the network with the best last validation accuracy (the student without peers)."""
        return self.networks()[self.chosen_name]

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """acc1, acc5 and CE loss on ``split`` ("val", "test" or "train_eval") of the chosen network.

        With peers every network is evaluated (``<name>/acc1``, ...), ``val`` chooses the best one
        (``chosen`` = its position in ``networks()``) and the plain keys are its metrics.
        """
        dataset = getattr(self.data, split)
        nets = self.networks()
        if len(nets) == 1:
            return evaluate_model(self.student, dataset, self.cfg.data.eval_batch_size, self.device)
        results = {name: evaluate_model(net, dataset, self.cfg.data.eval_batch_size, self.device)
                   for name, net in nets.items()}
        if split == "val":
            self.chosen_name = max(results, key=lambda name: results[name]["acc1"])
        out = dict(results[self.chosen_name])
        out.update({f"{name}/{k}": v for name, r in results.items() for k, v in r.items()})
        out["chosen"] = list(nets).index(self.chosen_name)
        return out

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything needed to resume: student, objective (heads, banks), optimiser, scheduler, epoch, RNG."""
        return {
            "epoch": self.epoch,
            "chosen": self.chosen_name,
            "student": self.student.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {**self._rng, "numpy": _numpy_state_to_tensors(self._rng["numpy"])},  # with "cuda" on a GPU
            "student_arch": student_arch(self.cfg.model),
            "num_classes": self.data.num_classes,
            "in_channels": self.data.in_channels,
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.chosen_name = state.get("chosen", "student")
        rng = {**state["rng"], "numpy": _numpy_state_from_tensors(state["rng"]["numpy"])}
        if self._cuda is None:
            rng.pop("cuda", None)
        elif "cuda" not in rng:  # a CPU checkpoint resumed on a GPU: the device keeps its seeded state
            rng["cuda"] = self._rng["cuda"]
        self._rng = rng  # this Learner's stream (torch states are set with .cpu(): also from a GPU-loaded file)


def _untimed(phase: str) -> None:
    """The lap of a Learner without a step timer: nothing."""


def _numpy_state_to_tensors(state: tuple) -> dict:
    """NumPy's RNG state as tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": (has_gauss, cached)}


def _numpy_state_from_tensors(state: dict) -> tuple:
    keys = state["keys"].cpu().numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["gauss"][0], state["gauss"][1])


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset, batch_size: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Top-1/top-5 accuracy and mean CE of ``model`` on ``dataset`` (items: image, label, index), over its
    labelled samples (``train_eval`` hides some labels with ``data.labeled_fraction`` < 1)."""
    was_training = model.training
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for images, labels, _ in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).logits
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum", ignore_index=UNLABELLED))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        count += int((labels != UNLABELLED).sum())
    model.train(was_training)
    return {"acc1": correct1 / count, "acc5": correct5 / count, "loss": loss_sum / count}
