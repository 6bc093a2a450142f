"""A teacher's outputs on every augmented view of the train split: one pass per sweep, read by every trial.

With ``data.augment`` each sample's view is a function of ``(seed, epoch, index)``
(:mod:`orchestrator.data.views`), so a trial's teacher outputs are known before it starts:
:func:`build_views` computes them once per (teacher, split, seed) and epoch, and every trial
that trains with that seed reads them (:class:`TeacherViews`) instead of running the teacher.

A view cache is a folder::

    meta.json        what it holds: seed, augmentation (CropFlip.view_key), split (sample count
                     and a digest of the source indices), fields, top-k, shapes
    epoch-00000.pt   the views of epoch 0: {"logits": (N, C) fp16, "embedding": (N, D) fp16}, rows
    epoch-00001.pt   by sample index; with top-k, logits are "topk_values" (N, k) fp16,
    ...              "topk_indices" (N, k) int16/int32 and "logsumexp" (N,) fp32 instead

Only vector fields (logits, embedding) are stored; a term reading feature maps runs its teacher
live (the registry's ``view_cacheable``). Top-k (FKD, Shen & Xing, ECCV 2022) keeps the k
largest logits and the log-sum-exp of all: the rest are filled with one value that puts the
missing probability mass (at temperature 1) evenly on them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from orchestrator.infra.atomic_files import atomic_torch_save, write_json_atomic
from orchestrator.distill.registry import EMBEDDING, LOGITS, Needs
from orchestrator.models import ModelOutput
from orchestrator.models.base import Shapes
from orchestrator.infra.safe_load import load_tensors

META = "meta.json"


class ViewCacheMismatch(ValueError):
    """A view cache that does not belong to this trial's views (seed, augmentation, split or epochs)."""


def split_digest(dataset) -> str:
    """A short digest of which source images the split's rows are (its ``source_indices``)."""
    source = torch.as_tensor(getattr(dataset, "source_indices", torch.arange(len(dataset))), dtype=torch.long)
    return hashlib.sha256(source.contiguous().numpy().tobytes()).hexdigest()[:16]


def augment_key(dataset) -> str | None:
    """The dataset's view transform and stream version, or None when it does not augment by keyed views."""
    return dataset.augment.view_key if getattr(dataset, "keyed_views", False) else None


def epoch_file(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:05d}.pt"


@dataclass(frozen=True)
class ViewMeta:
    """What a view cache holds (``meta.json``)."""

    seed: int
    augment: str
    num_samples: int
    split: str
    fields: tuple[str, ...]
    topk: int  # 0: all logits
    num_classes: int
    embedding_dim: int

    def bytes_per_epoch(self) -> int:
        return bytes_per_epoch(self.num_samples, self.fields, self.topk, self.num_classes, self.embedding_dim)

    def stored(self) -> str:
        """What each view's row holds, e.g. "top-5 logits + embedding in fp16"."""
        logits = f"top-{self.topk} logits" if self.topk else "logits"
        return " + ".join(logits if f == LOGITS else f for f in self.fields) + " in fp16"


def bytes_per_epoch(num_samples: int, fields, topk: int, num_classes: int, embedding_dim: int) -> int:
    """Bytes of one epoch of views (tensor data, without the file's few KiB of framing)."""
    per_row = 0
    if LOGITS in fields:
        topk = topk if 0 < topk < num_classes else 0
        per_row += topk * (2 + (2 if num_classes < 2**15 else 4)) + 4 if topk else 2 * num_classes
    if EMBEDDING in fields:
        per_row += 2 * embedding_dim
    return per_row * num_samples


def store_logits(logits: Tensor, topk: int) -> dict[str, Tensor]:
    """Logits (B, C) as stored: fp16, or top-k values + indices + the float32 log-sum-exp of all C."""
    if not topk:
        return {"logits": logits.half()}
    values, indices = logits.float().topk(topk, dim=1)
    index_dtype = torch.int16 if logits.shape[1] < 2**15 else torch.int32
    return {"topk_values": values.half(), "topk_indices": indices.to(index_dtype),
            "logsumexp": torch.logsumexp(logits.float(), dim=1)}


def restore_logits(stored: dict[str, Tensor], rows: Tensor, num_classes: int) -> Tensor:
    """Float32 logits (B, C) of ``rows`` from :func:`store_logits`'s fields: the top-k as stored, the other
    C - k logits all equal to log((1 - p_topk) / (C - k)) + logsumexp, so that softmax(logits) (T = 1) keeps
    the top-k probabilities and spreads the remaining mass evenly."""
    if "logits" in stored:
        return stored["logits"][rows].float()
    values = stored["topk_values"][rows].float()
    indices = stored["topk_indices"][rows].long()
    lse = stored["logsumexp"][rows].float()
    k = values.shape[1]
    rest = (1 - torch.exp(values - lse[:, None]).sum(1)).clamp_min(1e-12)
    fill = lse + torch.log(rest / (num_classes - k))
    return fill[:, None].expand(-1, num_classes).clone().scatter(1, indices, values)


class TeacherViews:
    """A view cache, read epoch by epoch (memory-mapped); the rows a trial's batch asks for as a ModelOutput."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / META
        if not path.is_file():
            raise ViewCacheMismatch(f"'{self.folder}' is not a teacher view cache (no {META})")
        raw = json.loads(path.read_text())
        self.meta = ViewMeta(**{**raw, "fields": tuple(raw["fields"])})
        self._epoch: int | None = None
        self._tensors: dict[str, Tensor] = {}

    @property
    def num_samples(self) -> int:
        return self.meta.num_samples

    def epochs(self) -> int:
        """How many epochs (0, 1, ...) of views are complete on disk."""
        n = 0
        while epoch_file(self.folder, n).is_file():
            n += 1
        return n

    def shapes(self) -> Shapes:
        return Shapes(self.meta.embedding_dim if EMBEDDING in self.meta.fields else 0, {})

    def check_matches(self, dataset, seed: int, epochs: int, needs: Needs | None = None) -> None:
        """Raise :class:`ViewCacheMismatch` naming what differs unless this cache holds the views a trial
        training on ``dataset`` with ``seed`` for ``epochs`` epochs sees, and the fields ``needs`` names."""
        m = self.meta
        ours = augment_key(dataset)
        if ours is None:
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' holds outputs on augmented views ({m.augment}), but this "
                "trial's train split is not augmented (data.augment=false); use the un-augmented output cache")
        if ours != m.augment:
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' holds views of augmentation {m.augment}, this trial's "
                f"augmentation is {ours}; rebuild the cache")
        if int(seed) != m.seed:
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' holds the views of seed {m.seed}, but this trial trains "
                f"with seed {seed}: its views differ; build a view cache for seed {seed} or run the teacher live")
        if len(dataset) != m.num_samples or split_digest(dataset) != m.split:
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' was built on another train split ({m.num_samples} "
                f"samples, digest {m.split}; this one: {len(dataset)}, {split_digest(dataset)}); rebuild it")
        have = self.epochs()
        if have < epochs:
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' holds {have} epoch(s) of views, this trial trains {epochs}")
        missing = sorted(set(needs.fields) - set(m.fields)) if needs is not None else []
        if missing or (needs is not None and needs.stages):
            raise ViewCacheMismatch(
                f"teacher view cache '{self.folder.name}' holds {', '.join(m.fields)}, the objective also reads "
                f"{', '.join(missing + [f'features[{s}]' for s in needs.stages])}")

    def _load(self, epoch: int) -> dict[str, Tensor]:
        if epoch != self._epoch:
            path = epoch_file(self.folder, epoch)
            if not path.is_file():
                raise ViewCacheMismatch(f"teacher view cache '{self.folder.name}' has no views of epoch {epoch}")
            self._tensors, self._epoch = load_tensors(path, "teacher view cache", mmap=True), epoch
        return self._tensors

    def rows(self, indices: Tensor, device: torch.device, epoch: int = 0) -> ModelOutput:
        """The views ``(seed, epoch, indices)``'s teacher outputs (float32 on ``device``; a field not stored is
        an empty tensor)."""
        stored = self._load(epoch)
        rows = indices.cpu()
        logits = restore_logits(stored, rows, self.meta.num_classes) if LOGITS in self.meta.fields else None
        embedding = stored["embedding"][rows].float() if EMBEDDING in self.meta.fields else None
        empty = torch.empty(0, device=device)
        return ModelOutput([], empty if embedding is None else embedding.to(device),
                           empty if logits is None else logits.to(device))


@torch.no_grad()
def build_views(teacher: nn.Module, dataset, seed: int, epochs: int, needs: Needs, folder: str | Path, *,
                topk: int = 0, batch_size: int = 512, device: torch.device | str = "cpu") -> TeacherViews:
    """Compute the epochs ``0..epochs-1`` of views missing from ``folder`` (each written atomically, so an
    interrupted build resumes) and return the cache. ``dataset``: the augmenting train split."""
    folder = Path(folder)
    key = augment_key(dataset)
    if key is None:
        raise ValueError("a view cache needs an augmenting in-memory train split (data.augment=true)")
    if needs.stages:
        raise ValueError(f"a view cache stores logits and embeddings only, not features {list(needs.stages)}")
    teacher.eval()
    device = torch.device(device)
    fields = tuple(f for f in (LOGITS, EMBEDDING) if f in needs.fields)
    n = len(dataset)
    probe = teacher(dataset.view_images(seed, 0, torch.arange(min(2, n))).to(device))
    num_classes = int(probe.logits.shape[1])
    topk = topk if 0 < topk < num_classes else 0
    meta = ViewMeta(int(seed), key, n, split_digest(dataset), fields, topk, num_classes, int(probe.embedding.shape[1]))
    if (folder / META).is_file():
        if TeacherViews(folder).meta != meta:
            raise ViewCacheMismatch(f"'{folder}' holds another view cache; remove it or choose another folder")
    else:
        write_json_atomic(folder / META, asdict(meta))
    for epoch in range(epochs):
        if epoch_file(folder, epoch).is_file():
            continue
        parts: dict[str, list[Tensor]] = {}
        for start in range(0, n, batch_size):
            positions = torch.arange(start, min(start + batch_size, n))
            out = teacher(dataset.view_images(seed, epoch, positions).to(device))
            chunk = store_logits(out.logits.cpu(), topk) if LOGITS in fields else {}
            if EMBEDDING in fields:
                chunk["embedding"] = out.embedding.cpu().half()
            for name, value in chunk.items():
                parts.setdefault(name, []).append(value)
        atomic_torch_save({name: torch.cat(values) for name, values in parts.items()}, epoch_file(folder, epoch))
    return TeacherViews(folder)
