"""CACR: contrastive attraction and contrastive repulsion (Zheng et al., TMLR 2023, arXiv 2105.03746).

CACR reweights both sides of a contrastive loss with conditional distributions. Given V views of a batch
(each (B, d), unit rows):

- attraction: for each query view x and sample i, the other views' copies of i are positives; the cost
  alpha * ||z_x[i] - z_y[i]||^2 is averaged under weights softmax_y(tau_pos * ||z_x[i] - z_y[i]||^2), which
  favour the farthest positives; averaged over i and x;
- repulsion: for each pair of views x < y, the other samples j != i of view y are negatives; the cost
  -beta * ||z_x[i] - z_y[j]||^2 is averaged under weights softmax_j(-tau_neg * ||z_x[i] - z_y[j]||^2), which
  favour the nearest (hardest) negatives; averaged over i and over the pairs.

The loss is attraction + repulsion; the weights are not detached (gradients flow through them), as in the
authors' code (JegZheng/CACR-SSL, ``small_scale_experiments/losses/__init__.py``: ``our_loss1`` and
``our_loss2`` with the Euclidean cost, ``choice='full'``, no debiasing); ``tests/test_distill_cacr.py``
pins our values to it. As a distillation term the views are the student's and the teacher's projections
of the same images (CRD's heads: Linear + L2 normalisation), the teacher's detached, so the student is
attracted to the teacher's view of its own image and repelled from the teacher's views of the others,
hard negatives weighing most. With M teachers: one head pair per teacher, weighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_count, check_positive, check_weight, normalise_weights
from orchestrator.distill.crd import Embed
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_term

# The authors' CIFAR-10 command (JegZheng/CACR-SSL small_scale_experiments/README.md at commit
# fbc9d94810cf55c8461ed86a60e48e70e14acbbe: --alpha 1.0 --beta 1.0 --tau_pos 1.0 --tau_neg 0.9; CIFAR-100
# and STL-10 use --tau_neg 2.0) and main_ours.py's --feat_dim 128. CACR trains alone there: the weight of
# this distillation term has no paper value.
PAPER_DEFAULTS = {
    "distill.cacr.alpha": 1.0,
    "distill.cacr.beta": 1.0,
    "distill.cacr.tau_pos": 1.0,
    "distill.cacr.tau_neg": 0.9,
    "distill.cacr.feat_dim": 128,
}


@dataclass
class CACRKnobs:
    """``distill.cacr.*``: alpha (attraction cost scale), beta (repulsion cost scale), tau_pos and tau_neg (the
    sharpness of the positive and negative weights; 0 = uniform), feat_dim, weight."""

    alpha: float = 1.0  # the attraction cost's scale
    beta: float = 1.0  # the repulsion cost's scale
    tau_pos: float = 1.0  # sharpness of the positive weights; 0 = uniform
    tau_neg: float = 0.9  # sharpness of the negative weights; 0 = uniform
    feat_dim: int = 128  # the output size of the projection heads
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        check_positive("alpha", self.alpha)
        check_positive("beta", self.beta)
        check_weight("tau_pos", self.tau_pos)
        check_weight("tau_neg", self.tau_neg)
        check_count("feat_dim", self.feat_dim)
        check_weight("weight", self.weight)


def cacr_attraction(views: Sequence[Tensor], alpha: float = 1.0, tau_pos: float = 1.0) -> Tensor:
    """mean over query views x of mean_i sum_{y != x} w_xy[i] alpha ||z_x[i] - z_y[i]||^2,
    w_x.[i] = softmax_y(tau_pos ||z_x[i] - z_y[i]||^2). views: V >= 2 tensors (B, d)."""
    z = torch.stack(list(views))  # (V, B, d)
    total = z.new_zeros(())
    for x in range(z.shape[0]):
        others = torch.cat([z[:x], z[x + 1:]])  # (V-1, B, d)
        sq = (z[x] - others).pow(2).sum(-1).t()  # (B, V-1)
        total = total + (alpha * sq * torch.softmax(tau_pos * sq, dim=1)).sum(1).mean()
    return total / z.shape[0]


def cacr_repulsion(views: Sequence[Tensor], beta: float = 1.0, tau_neg: float = 1.0) -> Tensor:
    """mean over view pairs x < y of mean_i sum_{j != i} w[i, j] (-beta ||z_x[i] - z_y[j]||^2),
    w[i, .] = softmax_{j != i}(-tau_neg ||z_x[i] - z_y[j]||^2). views: V >= 2 tensors (B, d), B >= 2."""
    pairs = [(x, y) for x in range(len(views)) for y in range(x + 1, len(views))]
    b = views[0].shape[0]
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=views[0].device)
    total = views[0].new_zeros(())
    for x, y in pairs:
        sq = (views[x][:, None] - views[y][None]).pow(2).sum(-1)[off_diagonal].view(b, b - 1)  # (B, B-1): j != i
        total = total + (-beta * sq * torch.softmax(-tau_neg * sq, dim=1)).sum(1).mean()
    return total / len(pairs)


def cacr_loss(views: Sequence[Tensor], alpha: float = 1.0, beta: float = 1.0, tau_pos: float = 1.0,
              tau_neg: float = 1.0) -> Tensor:
    """Attraction + repulsion of V >= 2 views (each (B, d) with B >= 2), computed in float32 at least."""
    if len(views) < 2 or views[0].shape[0] < 2 or any(v.shape != views[0].shape or v.dim() != 2 for v in views):
        raise ValueError(f"CACR needs >= 2 views of the same (B, d) shape with B >= 2, got "
                         f"{[tuple(v.shape) for v in views]}")
    dtype = torch.promote_types(views[0].dtype, torch.float32)
    views = [v.to(dtype) for v in views]
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        return cacr_attraction(views, alpha, tau_pos) + cacr_repulsion(views, beta, tau_neg)


class CACR(Term):
    """sum_m w_m cacr_loss([student projection, teacher m's projection]) over M >= 1 teachers."""

    def __init__(self, student_dim: int, teacher_dims: Sequence[int], *, teacher_weights: Sequence[float] | None = None,
                 feat_dim: int = 128, alpha: float = 1.0, beta: float = 1.0, tau_pos: float = 1.0, tau_neg: float = 0.9):
        super().__init__()
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.settings = dict(alpha=check_positive("alpha", alpha), beta=check_positive("beta", beta),
                             tau_pos=check_weight("tau_pos", tau_pos), tau_neg=check_weight("tau_neg", tau_neg))
        self.embed_s = nn.ModuleList(Embed(student_dim, feat_dim) for _ in teacher_dims)
        self.embed_t = nn.ModuleList(Embed(dim, feat_dim) for dim in teacher_dims)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.embed_t):
            raise ValueError(f"CACR was built for {len(self.embed_t)} teacher(s), got {len(batch.teachers)}")
        emb = batch.student.embedding
        return sum(
            w * cacr_loss([head_s(emb), head_t(t.embedding.detach())], **self.settings)
            for w, head_s, head_t, t in zip(self.teacher_weights, self.embed_s, self.embed_t, batch.teachers)
        )


def build(ctx: TermContext, knobs: CACRKnobs) -> CACR:
    return CACR(ctx.student.embedding, [t.embedding for t in ctx.teachers], teacher_weights=ctx.teacher_weights,
                feat_dim=knobs.feat_dim, alpha=knobs.alpha, beta=knobs.beta, tau_pos=knobs.tau_pos,
                tau_neg=knobs.tau_neg)


register_term(TermSpec(
    name="cacr",
    reference="Zheng et al., 2021 (CACR); JegZheng/CACR-SSL fbc9d94",
    build=build,
    knobs=CACRKnobs,
    needs=Needs(frozenset({EMBEDDING})),
    multi_teacher="per_teacher",
    parts=("embedding heads",),
    paper_defaults=PAPER_DEFAULTS,
))
