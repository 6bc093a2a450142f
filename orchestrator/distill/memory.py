"""CRD's memories and its NCE normalisers Z.

Each memory holds, per network, the rows CRD's negatives are read from (``pool_s``/``pool_t``), gives the
positives of a batch (:meth:`positives`) and takes the batch's projections afterwards (:meth:`update`):

- :class:`ContrastMemory` (``distill.crd.memory: bank``, the paper): one (N, d) bank per network,
  momentum-updated at the batch's rows; positives are bank rows;
- :class:`QueueMemory` (``queue``): the last Q projections of each network, MoCo-style, O(Q d) at any
  dataset size; positives are the other network's current projections of the same images.

Shapes: N = dataset size, Q = queue length, d = feat_dim, B = batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from orchestrator.distill.distributed import all_gather_rows, dist_world
from orchestrator.distill.queue import FeatureQueue

Z_MODES = ("fixed", "ema")


class NCENormalisers(nn.Module):
    """The NCE normalising constants Z of the student- and teacher-anchored scores (CRD's bank or queue).

    Buffers ``z_s``/``z_t`` (), -1 until the first training batch.

    Args:
        n_data: N, the training-set size (Z estimates mean(scores) * N).
        z_mode: "fixed" (Z of the first training batch, as the reference) or "ema"
            (Z <- z_momentum * Z + (1 - z_momentum) * estimate, every training batch).
    """

    def __init__(self, n_data: int, z_mode: str = "fixed", z_momentum: float = 0.99):
        super().__init__()
        if n_data <= 0:
            raise ValueError(f"n_data must be > 0, got {n_data}")
        if z_mode not in Z_MODES:
            raise ValueError(f"z_mode must be one of {list(Z_MODES)}, got {z_mode!r}")
        if not 0.0 <= z_momentum < 1.0:
            raise ValueError(f"z_momentum must be in [0, 1), got {z_momentum}")
        self.n_data, self.z_mode, self.z_momentum = int(n_data), z_mode, float(z_momentum)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    @torch.no_grad()
    def normalisers(self, scores_s: Tensor, scores_t: Tensor, update: bool) -> tuple[Tensor, Tensor]:
        """Z for the student- and teacher-anchored scores (B, K+1); updates the buffers if ``update``.

        Under torch.distributed the estimate is the mean over the global batch
        (all_reduce of sums and counts), so every rank holds the same Z.
        """
        fresh = self.z_s.item() < 0 or self.z_t.item() < 0
        need = fresh or (update and self.z_mode == "ema")
        if not need:
            return self.z_s.clone(), self.z_t.clone()
        stats = torch.stack(
            [
                scores_s.detach().float().sum(),
                scores_t.detach().float().sum(),
                torch.tensor(float(scores_s.numel()), device=scores_s.device),
            ]
        ).double()
        if update and dist_world()[1] > 1:
            dist.all_reduce(stats)
        est_s = (stats[0] / stats[2] * self.n_data).to(self.z_s.dtype)
        est_t = (stats[1] / stats[2] * self.n_data).to(self.z_t.dtype)
        if not update:  # evaluation: never store, only fill in a missing Z
            z_s = self.z_s.clone() if self.z_s.item() > 0 else est_s
            z_t = self.z_t.clone() if self.z_t.item() > 0 else est_t
            return z_s, z_t
        if fresh:
            self.z_s.copy_(est_s)
            self.z_t.copy_(est_t)
        else:  # ema
            self.z_s.mul_(self.z_momentum).add_((1 - self.z_momentum) * est_s)
            self.z_t.mul_(self.z_momentum).add_((1 - self.z_momentum) * est_t)
        return self.z_s.clone(), self.z_t.clone()


class ContrastMemory(NCENormalisers):
    """Student and teacher memory banks plus their NCE normalising constants.

    Buffers: ``bank_s``/``bank_t`` (N, d), initialised uniform in [-stdv, stdv],
    stdv = 1/sqrt(d/3) (the reference); ``z_s``/``z_t`` as :class:`NCENormalisers`.

    Args:
        n_data: N.  feat_dim: d.  momentum: bank update momentum in [0, 1).
        z_mode, z_momentum: see :class:`NCENormalisers`.
        seed: seeds the bank initialisation.
    """

    def __init__(
        self,
        n_data: int,
        feat_dim: int,
        momentum: float = 0.5,
        z_mode: str = "fixed",
        z_momentum: float = 0.99,
        seed: int = 0,
    ):
        super().__init__(n_data, z_mode, z_momentum)
        if feat_dim <= 0:
            raise ValueError(f"feat_dim must be > 0, got {feat_dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.feat_dim, self.momentum = int(feat_dim), float(momentum)
        gen = torch.Generator().manual_seed(int(seed))
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("bank_s", "bank_t"):
            self.register_buffer(name, torch.rand(n_data, feat_dim, generator=gen).mul_(2 * stdv).sub_(stdv))
        self._synced = False

    @property
    def pool_s(self) -> Tensor:
        return self.bank_s

    @property
    def pool_t(self) -> Tensor:
        return self.bank_t

    def positives(self, rows: Tensor, v_s: Tensor, v_t: Tensor) -> tuple[Tensor, Tensor]:
        """The positives of the student anchors (in ``pool_t``) and of the teacher anchors (in ``pool_s``):
        the bank rows ``rows`` (B,) in both."""
        return rows, rows

    @torch.no_grad()
    def sync(self) -> None:
        """Broadcast the banks from rank 0 once (ranks may have been seeded differently)."""
        _, world = dist_world()
        if world > 1 and not self._synced:
            dist.broadcast(self.bank_s, src=0)
            dist.broadcast(self.bank_t, src=0)
        self._synced = True

    @torch.no_grad()
    def update(self, indices: Tensor, emb_s: Tensor, emb_t: Tensor) -> None:
        """bank[idx] = momentum * bank[idx] + (1 - momentum) * emb, then L2-normalise rows.

        Args:
            indices: (B,) rows; emb_s, emb_t: (B, d). Under torch.distributed the
            global batch (all ranks, in rank order) is gathered first so every rank
            applies the identical update. A row that occurs more than once is updated
            from its first occurrence only (deterministic on every device).
        """
        indices = indices.to(self.bank_s.device, torch.long)
        packed = torch.cat([emb_s.detach().float(), emb_t.detach().float()], dim=1)
        indices = all_gather_rows(indices)
        packed = all_gather_rows(packed)
        uniq, inverse = torch.unique(indices, return_inverse=True)
        if uniq.numel() != indices.numel():
            pos = torch.arange(indices.numel(), device=indices.device)
            first = torch.full((uniq.numel(),), indices.numel(), device=indices.device, dtype=torch.long)
            first = first.scatter_reduce(0, inverse, pos, reduce="amin")
            indices, packed = indices[first], packed[first]
        d = self.feat_dim
        for bank, new in ((self.bank_s, packed[:, :d]), (self.bank_t, packed[:, d:])):
            rows = bank[indices] * self.momentum + new.to(bank.dtype) * (1 - self.momentum)
            rows = rows / rows.pow(2).sum(dim=1, keepdim=True).sqrt()
            bank.index_copy_(0, indices, rows)


class QueueMemory(NCENormalisers):
    """Student and teacher queues of the last Q projections (:class:`FeatureQueue`) plus Z.

    Buffers: ``queue_s.rows``/``queue_t.rows`` (Q, d) and their pointers; ``z_s``/``z_t``. Nothing has N rows:
    N is only the NCE noise 1/N (and cancels from the value, but for the reference's eps).

    Args:
        n_data: N.  size: Q.  feat_dim: d.  z_mode, z_momentum: see :class:`NCENormalisers`.
        seed: seeds the queues' initial rows (student queue: seed, teacher queue: seed + 1).
    """

    def __init__(self, n_data: int, size: int, feat_dim: int, z_mode: str = "fixed", z_momentum: float = 0.99,
                 seed: int = 0):
        super().__init__(n_data, z_mode, z_momentum)
        self.queue_s = FeatureQueue(size, feat_dim, seed)
        self.queue_t = FeatureQueue(size, feat_dim, seed + 1)

    @property
    def pool_s(self) -> Tensor:
        return self.queue_s.rows

    @property
    def pool_t(self) -> Tensor:
        return self.queue_t.rows

    def positives(self, rows: Tensor, v_s: Tensor, v_t: Tensor) -> tuple[Tensor, Tensor]:
        """The positive keys (B, d): the teacher's current projection of the same image for a student anchor
        and the student's for a teacher anchor (detached; ``rows`` is not used)."""
        return v_t.detach(), v_s.detach()

    @torch.no_grad()
    def sync(self) -> None:
        """Broadcast both queues from rank 0 once (ranks may have been seeded differently)."""
        self.queue_s.sync()
        self.queue_t.sync()

    @torch.no_grad()
    def update(self, indices: Tensor, emb_s: Tensor, emb_t: Tensor) -> None:
        """Enqueue the global batch's projections (B, d) of each network (``indices`` is not used)."""
        self.queue_s.enqueue(emb_s)
        self.queue_t.enqueue(emb_t)
