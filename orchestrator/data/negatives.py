"""Negative (and relaxed positive) sampling for CRD (contrastive representation distillation).

``class`` mode draws, for each anchor, negatives uniformly among the training
samples of *other* classes (the reference's ``cls_negative``); ``uniform``
mode draws them uniformly among all N samples (with replacement, as the
reference's alias sampler). ``sample_positives`` draws, for each anchor, a
random training sample of its own class (the reference's ``relax`` mode,
``cls_positive``; it may be the anchor itself).

Reproducibility: every draw re-seeds the sampler's own ``torch.Generator``
from ``(seed, stream, draw counter)``. The state is therefore just the counter
(plus the generator state, for inspection), so a resumed run draws exactly the
same negatives. ``stream`` separates data-parallel ranks: the CRD distiller
sets it to the rank, so ranks sharing one seed still draw different negatives.

Draws happen on the device asked for (the memory bank's): on a GPU, drawing
B x K class negatives on the host took longer than the whole training step
(77 ms for 128 x 16384 on one CPU thread, against a 10 ms step on an H100).
A device's generator gives its own stream, so a GPU run draws other (equally
distributed, equally reproducible) negatives than a CPU run with the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from orchestrator.data.split import UNLABELLED

MODES = ("class", "uniform")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(seed: int, stream: int, counter: int) -> int:
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (stream & _MASK64))
    h = _splitmix64(h ^ (counter & _MASK64))
    return h & ((1 << 63) - 1)


class NegativeSampler:
    """Draws CRD negatives.

    Args:
        labels: (N,) training labels (int64); N = memory-bank size. Unlabelled samples (-1,
            ``data.labeled_fraction``) are never class negatives: their class is unknown.
        k: number of negatives per anchor (``distill.crd.nce_k``), 0 < k < N.
        mode: "class" (other-class negatives) or "uniform".
        seed: base seed.
        same_class: also keep the class tables in uniform mode (for :meth:`sample_positives`).
    """

    def __init__(self, labels: Tensor, k: int, mode: str = "class", seed: int = 0, same_class: bool = False):
        labels = torch.as_tensor(labels).detach().to("cpu", torch.long).reshape(-1)
        n = labels.numel()
        if mode not in MODES:
            raise ValueError(f"negatives mode must be one of {list(MODES)}, got {mode!r}")
        if int(k) <= 0:
            raise ValueError(f"nce_k must be > 0, got {k}")
        if int(k) >= n:
            raise ValueError(f"nce_k ({k}) must be smaller than the number of training samples ({n})")
        if n and int(labels.min()) < UNLABELLED:
            raise ValueError(f"labels must be >= 0, or {UNLABELLED} for an unlabelled sample")
        self.labels = labels
        self.n = n
        self.k = int(k)
        self.mode = mode
        self.seed = int(seed)
        self.stream = 0
        self.counter = 0
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self._on_device: dict[torch.device, tuple[torch.Generator, dict[str, Tensor]]] = {}
        if mode == "class" or same_class:
            labelled = torch.nonzero(labels != UNLABELLED).flatten()
            counts = torch.bincount(labels[labelled])  # (C,)
            self._class_tables = {
                "order": labelled[torch.argsort(labels[labelled], stable=True)],  # (L,) labelled samples by class
                "counts": counts,
                "starts": torch.cumsum(counts, 0) - counts,  # (C,) first slot of class c
            }
        else:
            self._class_tables = {}
        self._on_device[torch.device("cpu")] = (self.generator, self._class_tables)

    def _next_draw(self, device: torch.device | str) -> tuple[torch.Generator, dict[str, Tensor]]:
        """The generator of ``device``, re-seeded for this draw, and the class tables on that device."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self._on_device:
            tables = {name: t.to(device) for name, t in self._class_tables.items()}
            self._on_device[device] = (torch.Generator(device=device), tables)
        gen, tables = self._on_device[device]
        gen.manual_seed(_derive_seed(self.seed, self.stream, self.counter))
        self.counter += 1
        return gen, tables

    def sample(self, indices: Tensor, labels: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Negatives per anchor.

        Args:
            indices: (B,) dataset indices of the anchors (for shape; the positive).
            labels: (B,) anchor labels (used in class mode).
            device: where to draw them (and return them).
        Returns:
            (B, K) int64 tensor of dataset indices on ``device``.
        """
        b = int(indices.shape[0])
        gen, tables = self._next_draw(device)
        if self.mode == "uniform":
            return torch.randint(0, self.n, (b, self.k), generator=gen, device=gen.device)
        counts = tables["counts"]
        y = labels.detach().to(counts.device, torch.long).reshape(-1)
        if y.numel() != b:
            raise ValueError(f"labels has {y.numel()} entries, indices {b}")
        if b and int(y.min()) < 0:
            raise ValueError("class negatives need labelled anchors (an unlabelled sample has no class)")
        if b and int(y.max()) >= counts.numel():
            raise ValueError(f"label {int(y.max())} does not occur in the training labels")
        same = counts[y]  # (B,)
        other = tables["order"].numel() - same  # (B,) how many candidates each anchor has (labelled, other class)
        if b and int(other.min()) == 0:
            raise ValueError("class negatives need at least two classes in the training labels")
        # uniform slot among the N - n_c other-class samples, then skip class c's block
        u = torch.rand((b, self.k), generator=gen, dtype=torch.float64, device=gen.device)
        slot = (u * other[:, None]).long().minimum(other[:, None] - 1)
        slot = slot + (slot >= tables["starts"][y][:, None]).long() * same[:, None]
        return tables["order"][slot]

    def sample_positives(self, labels: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """One random training sample of each anchor's class (the reference's ``relax`` positive).

        Args:
            labels: (B,) anchor labels (all known).  device: where to draw them.
        Returns:
            (B,) int64 dataset indices on ``device``, uniform among the labelled samples of that class.
        """
        if not self._class_tables:
            raise ValueError("same-class positives need the class tables: build the sampler with same_class=True")
        gen, tables = self._next_draw(device)
        counts = tables["counts"]
        y = labels.detach().to(counts.device, torch.long).reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= counts.numel() or int(counts[y].min()) == 0):
            raise ValueError("same-class positives need labelled anchors of classes in the training labels")
        u = torch.rand(y.shape, generator=gen, dtype=torch.float64, device=gen.device)
        slot = (u * counts[y]).long().minimum(counts[y] - 1)
        return tables["order"][tables["starts"][y] + slot]

    def sample_shared(self, device: torch.device | str = "cpu") -> Tensor:
        """One set of K distinct negatives for a whole batch: (K,) int64 tensor on ``device`` (uniform)."""
        gen, _ = self._next_draw(device)
        return torch.randperm(self.n, generator=gen, device=gen.device)[: self.k]

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "counter": self.counter,
            "k": self.k,
            "mode": self.mode,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["k"]) != self.k or state["mode"] != self.mode:
            raise ValueError(
                f"sampler state is for k={state['k']}, mode={state['mode']!r}; "
                f"this sampler has k={self.k}, mode={self.mode!r}"
            )
        self.seed = int(state["seed"])
        self.counter = int(state["counter"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded with map_location="cuda"
