"""Teacher outputs on the un-augmented train split, computed once (:func:`compute_teacher_outputs`) and stored as
one file (:class:`CachedTeacherOutputs`): logits (N, num_classes), embedding (N, D) and feature maps by stage."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from orchestrator.data import make_loader
from orchestrator.distill import registry
from orchestrator.distill.stages import select_all
from orchestrator.infra.atomic_files import atomic_torch_save
from orchestrator.infra.safe_load import load_tensors
from orchestrator.models import ModelOutput
from orchestrator.models.base import Shapes, freeze, stage_names


@dataclass
class CachedTeacherOutputs:
    """Teacher outputs precomputed on the un-augmented train split, indexed by sample index.

    Holds only the fields the objective reads: logits (N, num_classes), embedding (N, D) and
    features {stage name: (N, C, H, W)}, each None/empty when not stored; stage_names: all the
    teacher's stages in order (features keeps their positions); source_indices: (N,) which
    source images the rows belong to (checked against the train split, so a cache never meets
    another split).
    """

    logits: Tensor | None
    embedding: Tensor | None
    source_indices: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    stage_names: tuple[str, ...] = ()

    def save(self, path) -> None:
        atomic_torch_save({"logits": self.logits, "embedding": self.embedding, "source_indices": self.source_indices,
                           "features": self.features, "stage_names": list(self.stage_names)}, path)

    @classmethod
    def load(cls, path) -> CachedTeacherOutputs:
        blob = load_tensors(path, "teacher-output cache")
        return cls(blob["logits"], blob["embedding"], blob.get("source_indices"), blob.get("features") or {},
                   tuple(blob.get("stage_names") or ()))

    @property
    def num_samples(self) -> int:
        return next(t.shape[0] for t in (self.logits, self.embedding, *self.features.values()) if t is not None)

    def shapes(self) -> Shapes:
        """The teacher's Shapes as far as the cache holds them (embedding 0, stage shape () when not stored)."""
        return Shapes(0 if self.embedding is None else int(self.embedding.shape[1]),
                      {name: tuple(self.features[name].shape[1:]) if name in self.features else ()
                       for name in self.stage_names})

    def rows(self, indices: Tensor, device: torch.device, epoch: int = 0) -> ModelOutput:
        """The batch's rows as a ModelOutput (every stage at its position; fields not stored are empty tensors).
        ``epoch`` is not used: un-augmented outputs are the same every epoch."""
        def take(t: Tensor | None) -> Tensor:
            return torch.empty(0, device=device) if t is None else t[indices].to(device)

        return ModelOutput([take(self.features.get(name)) for name in self.stage_names], take(self.embedding),
                           take(self.logits))

    def covers(self, needs: registry.Needs) -> bool:
        """True when every field and stage ``needs`` names is stored (stage selectors resolved on this teacher)."""
        stored = {"logits": self.logits is not None, "embedding": self.embedding is not None}
        if not all(stored.get(f, False) for f in needs.fields):
            return False
        try:
            return set(select_all(needs.stages, self.stage_names, "the teacher")) <= set(self.features)
        except ValueError:
            return False

    def check_matches(self, dataset) -> None:
        """Raise ValueError unless the rows line up with ``dataset``'s samples (un-augmented ones)."""
        if getattr(dataset, "keyed_views", False):
            raise ValueError(
                "teacher output cache holds outputs on un-augmented images, but the train split is augmented "
                "(data.augment=true): use a teacher view cache (teacher_outputs/views.py) or run the teacher live"
            )
        if self.num_samples != len(dataset):
            raise ValueError(
                f"teacher output cache holds {self.num_samples} samples but the train split has "
                f"{len(dataset)}; recompute it for this data configuration"
            )
        mine, theirs = self.source_indices, getattr(dataset, "source_indices", None)
        if mine is not None and theirs is not None and not torch.equal(mine, torch.as_tensor(theirs)):
            raise ValueError(
                "teacher output cache was computed on a different train split (another seed, subset or "
                "val_fraction); recompute it for this data configuration"
            )



@torch.no_grad()
def compute_teacher_outputs(
    teacher: nn.Module, dataset, batch_size: int = 512, device="cpu", needs: registry.Needs = registry.OUTPUTS
) -> CachedTeacherOutputs:
    """Run a frozen teacher once over ``dataset`` (un-augmented); rows ordered by sample index.

    Stores what ``needs`` names (default: logits and embedding), in float32 on the CPU.
    """
    freeze(teacher)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    n = len(dataset)
    fields: dict[str, Tensor] = {}
    names: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()  # needs.stages are names or selectors (distill/stages.py)
    for images, _, indices in loader:
        out = teacher(images.to(device))
        if not names:
            names = stage_names(teacher, len(out.features))
            stages = select_all(needs.stages, names, "the teacher")
        values = {registry.LOGITS: out.logits, registry.EMBEDDING: out.embedding,
                  **{f"stage:{n}": f for n, f in zip(names, out.features)}}
        wanted = [f for f in (registry.LOGITS, registry.EMBEDDING) if f in needs.fields]
        for key in wanted + [f"stage:{s}" for s in stages]:
            if key not in fields:
                fields[key] = torch.empty(n, *values[key].shape[1:])
            fields[key][indices] = values[key].float().cpu()
    source = getattr(dataset, "source_indices", None)
    return CachedTeacherOutputs(
        fields.get(registry.LOGITS), fields.get(registry.EMBEDDING),
        None if source is None else torch.as_tensor(source).clone(),
        {s: fields[f"stage:{s}"] for s in stages}, names,
    )
