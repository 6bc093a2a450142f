"""CRD memory banks, NCE scores/loss and the distributed helpers they need.

Shapes: N = dataset size (bank rows), d = feat_dim, B = batch, K = negatives.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

Z_MODES = ("fixed", "ema")


# ---------------------------------------------------------------- distributed


def dist_world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate (B_r, ...) tensors from every rank in rank order; B_r may differ per rank."""
    _, world = dist_world()
    if world == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_int = [int(s.item()) for s in sizes]
    longest = max(sizes_int)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes_int)], dim=0)


# ---------------------------------------------------------------- scores / loss


def contrast_scores(anchor: Tensor, bank: Tensor, indices: Tensor, negatives: Tensor, tau: float) -> Tensor:
    """Unnormalised NCE scores exp(<anchor, bank row> / tau).

    Args:
        anchor: (B, d) unit vectors (gradient flows through them).
        bank: (N, d) memory bank (no gradient).
        indices: (B,) positive rows.
        negatives: (B, K) per-anchor rows ("exact") or (K,) rows shared by the batch ("shared").
    Returns:
        (B, K + 1): column 0 the positive, columns 1.. the negatives.
    """
    bank = bank.detach()
    if negatives.dim() == 2:  # exact: (B, K+1, d) gather, the reference behaviour
        idx = torch.cat([indices[:, None], negatives], dim=1)
        weights = torch.index_select(bank, 0, idx.reshape(-1)).view(*idx.shape, bank.shape[1])  # (B, K+1, d)
        logits = torch.bmm(weights, anchor[:, :, None]).squeeze(2)
    elif negatives.dim() == 1:  # shared: one (B, d) @ (d, K) matmul
        pos = (bank[indices] * anchor).sum(dim=1, keepdim=True)  # (B, 1)
        neg = anchor @ bank[negatives].t()  # (B, K)
        logits = torch.cat([pos, neg], dim=1)
    else:
        raise ValueError(f"negatives must be (B, K) or (K,), got shape {tuple(negatives.shape)}")
    return torch.exp(logits / tau)


def nce_loss(probs: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """NCE loss of CRD (paper Eq. 18) with noise distribution Pn = 1/N.

    Args:
        probs: (B, K + 1) normalised scores P = exp(<v, m>/tau) / Z, positive in column 0.
        n_data: N, the number of training samples.
    Returns:
        scalar  -(1/B) sum_b [log(P_pos/(P_pos + K Pn)) + sum_neg log(K Pn/(P_neg + K Pn))]
        (``eps`` in the denominators, as the reference).
    """
    batch, k = probs.shape[0], probs.shape[1] - 1
    m_pn = k / float(n_data)
    p_pos, p_neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(p_pos / (p_pos + m_pn + eps))
    log_d0 = torch.log(m_pn / (p_neg + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / batch


# ---------------------------------------------------------------- fused training path
#
# ``contrast_scores`` + ``nce_loss`` above are the reference formulation; autograd
# through them keeps ~30 (B, K+1) temporaries per direction and, in exact mode,
# gathers a (B, K+1, d) copy of the bank (1 GiB per bank at B=128, K=16384).
# ``CRDLoss`` trains through the functions below instead: the same scores and
# the same loss value, the gradient written out by hand (Z is a constant, as in
# the reference), a handful of in-place passes, and in exact mode the scores read
# from one (B, N) matmul when that is cheaper than the gather (docs/BENCHMARKS.md).

DENSE_MAX_ELEMENTS = 1 << 25  # exact mode: (B, N) score matrices up to 128 MiB (fp32) ...
DENSE_MAX_RATIO = 64  # ... and N <= 64 (K + 1): one matmul beats the per-anchor gather
GATHER_CHUNK_ELEMENTS = 1 << 26  # exact mode otherwise: gather (chunk, K+1, d) blocks of at most 256 MiB


class Workspace:
    """Scratch tensors kept from one step to the next, by name.

    A fresh (B, K+1) fp32 matrix costs page faults on every step on a CPU (~4 ms for
    the 8 MiB of B = 128, K = 16384 on the 2-core machine of docs/BENCHMARKS.md, as
    long as the exp over it); a reused one costs nothing. Only for tensors that no
    autograd graph keeps: each use overwrites the last.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def like(self, name: str, tensor: Tensor) -> Tensor:
        """A buffer with ``tensor``'s size, strides, dtype and device (``tensor`` dense)."""
        buf = self._buffers.get(name)
        if buf is None or (buf.size(), buf.stride(), buf.dtype, buf.device) != (
            tensor.size(), tensor.stride(), tensor.dtype, tensor.device
        ):
            buf = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, device=tensor.device)
            self._buffers[name] = buf
        return buf

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous buffer of ``shape`` with ``like``'s dtype and device."""
        buf = self._buffers.get(name)
        if buf is None or (tuple(buf.shape), buf.dtype, buf.device) != (tuple(shape), like.dtype, like.device):
            buf = like.new_empty(shape)
            self._buffers[name] = buf
        return buf


@torch.no_grad()
def contrast_dots(anchor: Tensor, bank: Tensor, indices: Tensor, negatives: Tensor, work: Workspace | None = None):
    """Raw dot products <anchor, bank row> and how to send a gradient back to the anchors.

    Args: as :func:`contrast_scores` (``anchor`` is used detached); ``work``: where the
        (B, K+1) result and the gathered rows live (fresh tensors without it).
    Returns:
        dots: (B, K + 1), positive in column 0 (``contrast_scores`` = exp(dots / tau)).
            With shared negatives it is the transpose of a (K+1, B) matrix: the product
            bank rows x anchors is 1.4x faster on CPU than anchors x bank rows^T.
        back: g (B, K + 1) -> (B, d), sum_j g[b, j] * row_j: d loss / d anchor from d loss / d dots.
            It reads the bank as it is now: call it before the bank is updated.
    """
    anchor, bank = anchor.detach(), bank.detach()
    work = work or Workspace()
    b, d = anchor.shape
    if negatives.dim() == 1:  # shared: one (K, d) @ (d, B) matmul
        k = negatives.shape[0]
        pos_rows = torch.index_select(bank, 0, indices)  # (B, d)
        neg_rows = torch.index_select(bank, 0, negatives, out=work.get("rows", (k, d), bank))  # (K, d)
        dots_t = work.get("dots", (k + 1, b), anchor)
        torch.mm(neg_rows, anchor.t(), out=dots_t[1:])
        torch.sum(pos_rows * anchor, dim=1, out=dots_t[0])
        return dots_t.t(), lambda g: torch.addmm(g[:, :1] * pos_rows, g[:, 1:], neg_rows)
    if negatives.dim() != 2:
        raise ValueError(f"negatives must be (B, K) or (K,), got shape {tuple(negatives.shape)}")
    idx = torch.cat([indices[:, None], negatives], dim=1)  # (B, K+1)
    n, k1 = bank.shape[0], idx.shape[1]
    if b * n <= DENSE_MAX_ELEMENTS and n <= DENSE_MAX_RATIO * k1:  # exact, dense: all N scores, then pick
        dots = (anchor @ bank.t()).gather(1, idx)

        def back_dense(g: Tensor) -> Tensor:
            # scatter_add: a row drawn twice for one anchor counts twice, as in the gather
            return torch.zeros(b, n, dtype=g.dtype, device=g.device).scatter_add_(1, idx, g) @ bank

        return dots, back_dense
    step = max(1, GATHER_CHUNK_ELEMENTS // (k1 * d))  # exact, gathered (the reference), in anchor chunks

    def rows(lo: int, hi: int) -> Tensor:
        part = idx[lo:hi]
        return torch.index_select(bank, 0, part.reshape(-1)).view(part.shape[0], k1, d)

    if b <= step:
        weights = rows(0, b)
        dots = torch.bmm(weights, anchor[:, :, None]).squeeze(2)
        return dots, lambda g: torch.bmm(g[:, None, :], weights).squeeze(1)
    chunks = range(0, b, step)
    dots = torch.cat([torch.bmm(rows(lo, lo + step), anchor[lo : lo + step, :, None]).squeeze(2) for lo in chunks])
    return dots, lambda g: torch.cat(
        [torch.bmm(g[lo : lo + step, None, :], rows(lo, lo + step)).squeeze(1) for lo in chunks]
    )


@torch.no_grad()
def nce_loss_and_grad(
    scores: Tensor, z: Tensor, n_data: int, need_grad: bool = True, eps: float = 1e-7, work: Workspace | None = None
):
    """``nce_loss(scores / z, n_data)`` and its gradient with respect to the dots.

    Args:
        scores: (B, K + 1) exp(dots / tau), positive in column 0; overwritten (used as workspace).
        z: () normalising constant (a constant for the gradient, as in the reference).
        work: keeps the one (B, K+1) temporary from step to step.
    Returns:
        (loss (), grad (B, K + 1) or None): grad * grad_scale(tau, B) = d loss / d dots, i.e.
        (1/B) p / (tau (p + m + eps)) for a negative and -(1/B) (m + eps) / (tau (p + m + eps))
        for the positive, with p = scores / z and m = K / N.

    With w = scores / (m z) = p / m: p / (p + m + eps) = w / u and m / (p + m + eps) = 1 / u,
    u = w + 1 + eps / m. The (B, K+1) matrix is passed over 5 times (scale, u, grad, log, sum),
    and every summed log(u) is small and positive (no cancellation in the fp32 sum).
    """
    batch, k = scores.shape[0], scores.shape[1] - 1
    m_pn = k / float(n_data)
    w = scores.mul_(1.0 / (z * m_pn))  # p / m
    u = torch.add(w, 1.0 + eps / m_pn, out=(work or Workspace()).like("u", w))  # (p + m + eps) / m
    log_pos = torch.log(w[:, 0] / u[:, 0]).sum()
    grad = None
    if need_grad:
        grad = w.div_(u)  # p / (p + m + eps)
        grad[:, 0] = u[:, 0].reciprocal().mul_(-(1.0 + eps / m_pn))
    loss = (u[:, 1:].log_().sum() - log_pos) / batch
    return loss, grad  # grad still to be multiplied by 1 / (tau * B): see grad_scale


def grad_scale(tau: float, batch: int) -> float:
    """The factor ``nce_loss_and_grad``'s grad still needs (applied to the small (B, d) result)."""
    return 1.0 / (tau * batch)


class _KnownGradient(torch.autograd.Function):
    """``value`` (a scalar computed without autograd) whose gradient w.r.t. ``anchor`` is ``grad``."""

    @staticmethod
    def forward(ctx, anchor: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, upstream: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * upstream, None, None


def with_gradient(value: Tensor, anchor: Tensor, grad: Tensor | None) -> Tensor:
    """``value`` carrying d value / d anchor = ``grad`` into autograd (plain ``value`` if there is none)."""
    if grad is None or not anchor.requires_grad or not torch.is_grad_enabled():
        return value
    return _KnownGradient.apply(anchor, value, grad.to(anchor.dtype))


# ---------------------------------------------------------------- memory


class ContrastMemory(nn.Module):
    """Student and teacher memory banks plus their NCE normalising constants.

    Buffers: ``bank_s``/``bank_t`` (N, d), initialised uniform in [-stdv, stdv],
    stdv = 1/sqrt(d/3) (the reference); ``z_s``/``z_t`` () normalising constants of
    the student-anchored and teacher-anchored scores, -1 until the first batch.

    Args:
        n_data: N.  feat_dim: d.  momentum: bank update momentum in [0, 1).
        z_mode: "fixed" (Z = mean(scores) * N of the first training batch, as the reference)
            or "ema" (Z <- z_momentum * Z + (1 - z_momentum) * estimate, every training batch).
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
        super().__init__()
        if n_data <= 0:
            raise ValueError(f"n_data must be > 0, got {n_data}")
        if feat_dim <= 0:
            raise ValueError(f"feat_dim must be > 0, got {feat_dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if z_mode not in Z_MODES:
            raise ValueError(f"z_mode must be one of {list(Z_MODES)}, got {z_mode!r}")
        if not 0.0 <= z_momentum < 1.0:
            raise ValueError(f"z_momentum must be in [0, 1), got {z_momentum}")
        self.n_data, self.feat_dim = int(n_data), int(feat_dim)
        self.momentum, self.z_mode, self.z_momentum = float(momentum), z_mode, float(z_momentum)
        gen = torch.Generator().manual_seed(int(seed))
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("bank_s", "bank_t"):
            self.register_buffer(name, torch.rand(n_data, feat_dim, generator=gen).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._synced = False

    @torch.no_grad()
    def sync_banks(self) -> None:
        """Broadcast the banks from rank 0 once (ranks may have been seeded differently)."""
        _, world = dist_world()
        if world > 1 and not self._synced:
            dist.broadcast(self.bank_s, src=0)
            dist.broadcast(self.bank_t, src=0)
        self._synced = True

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
