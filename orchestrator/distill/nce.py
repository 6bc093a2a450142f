"""NCE scores and loss of the contrastive terms (CRD), plain and fused with a hand-written gradient.

Shapes: N = dataset size (bank rows), d = feat_dim, B = batch, K = negatives. The fused path serves CRD's
memory bank and its queue alike (``contrast_dots`` reads negatives from a pool of rows).
"""

from __future__ import annotations

import torch
from torch import Tensor

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
def contrast_dots(
    anchor: Tensor, pool: Tensor, positives: Tensor, negatives: Tensor | None, work: Workspace | None = None
):
    """Raw dot products of each anchor with its positive and its negatives, and how to send a gradient back.

    Args:
        anchor: (B, d), used detached.
        pool: (P, d) the rows the negatives index: a memory bank (P = N) or a queue (P = its length).
        positives: (B,) rows of ``pool`` (the bank: the sample's own row, or a same-class one), or the
            (B, d) positive keys themselves (a queue: the other network's current projections; shared
            negatives only).
        negatives: (B, K) per-anchor rows ("exact"), (K,) rows shared by the batch ("shared"), or None:
            every row of ``pool``, shared (a queue as long as K).
        work: where the (B, K+1) result and the gathered rows live (fresh tensors without it).
    Returns:
        dots: (B, K + 1), positive in column 0 (``contrast_scores`` = exp(dots / tau)).
            With shared negatives it is the transpose of a (K+1, B) matrix: the product
            rows x anchors is 1.4x faster on CPU than anchors x rows^T.
        back: g (B, K + 1) -> (B, d), sum_j g[b, j] * row_j: d loss / d anchor from d loss / d dots.
            It reads ``pool`` as it is now: call it before the bank or queue is updated.
    """
    anchor, pool = anchor.detach(), pool.detach()
    work = work or Workspace()
    b, d = anchor.shape
    if negatives is None or negatives.dim() == 1:  # shared: one (K, d) @ (d, B) matmul
        pos_rows = positives.detach() if positives.dim() == 2 else torch.index_select(pool, 0, positives)  # (B, d)
        if negatives is None:
            neg_rows = pool
        else:
            neg_rows = torch.index_select(pool, 0, negatives, out=work.get("rows", (negatives.shape[0], d), pool))
        dots_t = work.get("dots", (neg_rows.shape[0] + 1, b), anchor)
        torch.mm(neg_rows, anchor.t(), out=dots_t[1:])
        torch.sum(pos_rows * anchor, dim=1, out=dots_t[0])
        return dots_t.t(), lambda g: torch.addmm(g[:, :1] * pos_rows, g[:, 1:], neg_rows)
    if positives.dim() != 1:
        raise ValueError("per-anchor negatives read their positives from the bank: pass (B,) row indices")
    if negatives.dim() != 2:
        raise ValueError(f"negatives must be (B, K), (K,) or None, got shape {tuple(negatives.shape)}")
    idx = torch.cat([positives[:, None], negatives], dim=1)  # (B, K+1)
    n, k1 = pool.shape[0], idx.shape[1]
    if b * n <= DENSE_MAX_ELEMENTS and n <= DENSE_MAX_RATIO * k1:  # exact, dense: all N scores, then pick
        dots = (anchor @ pool.t()).gather(1, idx)

        def back_dense(g: Tensor) -> Tensor:
            # scatter_add: a row drawn twice for one anchor counts twice, as in the gather
            return torch.zeros(b, n, dtype=g.dtype, device=g.device).scatter_add_(1, idx, g) @ pool

        return dots, back_dense
    step = max(1, GATHER_CHUNK_ELEMENTS // (k1 * d))  # exact, gathered (the reference), in anchor chunks

    def rows(lo: int, hi: int) -> Tensor:
        part = idx[lo:hi]
        return torch.index_select(pool, 0, part.reshape(-1)).view(part.shape[0], k1, d)

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
