"""A MoCo-style FIFO queue of the last K embeddings, for contrastive terms (SEED, queue-mode CRD).

Its memory is O(K * d) whatever the dataset size. Under torch.distributed the keys of the global
batch (all ranks, in rank order) are enqueued, so every rank keeps the identical queue.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.checks import check_count
from orchestrator.distill.distributed import all_gather_rows, dist_world


class FeatureQueue(nn.Module):
    """Buffers ``rows`` (K, d), initialised to random unit rows (a seeded normal draw, the same on every
    rank, as MoCo and SEED), and ``ptr`` (), the next row to overwrite.

    Args:
        size: K.  dim: d.  seed: seeds the initial rows.
    """

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        check_count("queue size", size)
        check_count("queue dim", dim)
        gen = torch.Generator().manual_seed(int(seed))
        self.register_buffer("rows", F.normalize(torch.randn(int(size), int(dim), generator=gen), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self._synced = False

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def sync(self) -> None:
        """Broadcast the queue from rank 0 once (ranks may have been seeded differently); call before training."""
        if dist_world()[1] > 1 and not self._synced:
            dist.broadcast(self.rows, src=0)
            dist.broadcast(self.ptr, src=0)
        self._synced = True

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest rows with ``keys`` (B, d) (gathered from every rank first).

        Rows are written at ``ptr, ptr + 1, ...`` modulo K; a global batch longer than K keeps its last K rows.
        """
        keys = all_gather_rows(keys.detach().to(self.rows.device, self.rows.dtype))
        n = min(keys.shape[0], self.size)
        if n == 0:
            return
        where = (int(self.ptr) + torch.arange(n, device=self.rows.device)) % self.size
        self.rows.index_copy_(0, where, keys[keys.shape[0] - n:])
        self.ptr.fill_((int(self.ptr) + n) % self.size)
