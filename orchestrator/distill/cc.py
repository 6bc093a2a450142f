"""Correlation congruence, CC (Peng et al., ICCV 2019), as RepDistiller runs it in the CRD paper.

The student's and the teacher's embeddings each go through their own linear head to ``feat_dim``;
with ``d = |head_s(e_s) - head_t(e_t)|`` (B, feat_dim), the term is the batch mean of
``<d_i, d_(i+1)>`` over consecutive samples i of the batch: the form of the authors' code that
RepDistiller ships (``distiller_zoo/CC.py``), not the kernel correlation of the paper's text. Both heads
train; the teacher does not. A batch of one sample has no pair and gives 0. With M teachers: one head
pair per teacher, the M terms weighted by the teacher weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext
from orchestrator.distill.checks import check_count, check_weight, normalise_weights
from orchestrator.distill.registry import EMBEDDING, Needs, TermSpec, register_preset, register_term

# The paper's settings (RepDistiller scripts/run_cifar_distill.sh, CC: --distill correlation -a 0 -b 0.02;
# train_student.py: LinearEmbed heads to --feat_dim 128 on feat[-1] = our embedding; at commit
# b84f547c5db6a35318d4671d7d5c4de74c822403).
PAPER_DEFAULTS = {"distill.ce.weight": 1.0, "distill.cc.weight": 0.02, "distill.cc.feat_dim": 128}


@dataclass
class CCKnobs:
    """``distill.cc.*``: the heads' output size and the term's weight."""

    feat_dim: int = 128  # the heads' output size
    weight: float = 0.02  # the term's weight

    def __post_init__(self):
        check_count("feat_dim", self.feat_dim)
        check_weight("weight", self.weight)


def cc_loss(z_s: Tensor, z_t: Tensor) -> Tensor:
    """Mean over i of ``<|z_s - z_t|_i, |z_s - z_t|_(i+1)>`` for (B, D) head outputs (0 when B < 2)."""
    d = (z_s.float() - z_t.float()).abs()
    if d.shape[0] < 2:
        return d.sum() * 0.0
    return (d[:-1] * d[1:]).sum(1).mean()


class CC(Term):
    """``sum_m w_m cc_loss(head_s_m(e_s), head_t_m(e_t_m))``; the heads are Linear layers.

    Args:
        student_dim: Ds; teacher_dims: M teacher embedding sizes; teacher_weights: M weights.
        feat_dim: the heads' output size.
    """

    def __init__(self, student_dim: int, teacher_dims: Sequence[int], teacher_weights: Sequence[float] | None = None,
                 feat_dim: int = 128):
        super().__init__()
        feat_dim = check_count("feat_dim", feat_dim)
        self.teacher_weights = normalise_weights(teacher_weights, len(teacher_dims))
        self.heads_s = nn.ModuleList(nn.Linear(student_dim, feat_dim) for _ in teacher_dims)
        self.heads_t = nn.ModuleList(nn.Linear(dim, feat_dim) for dim in teacher_dims)

    def use_identity_parts(self) -> None:
        """Identity heads: the correlation of the embeddings themselves (needs Ds = Dt)."""
        for head_s, head_t in zip(self.heads_s, self.heads_t):
            if head_s.in_features != head_t.in_features:
                raise ValueError(f"CC: identity heads need embeddings of one size, got student {head_s.in_features} "
                                 f"and teacher {head_t.in_features}")
        self.heads_s = nn.ModuleList(nn.Identity() for _ in self.heads_s)
        self.heads_t = nn.ModuleList(nn.Identity() for _ in self.heads_t)

    def forward(self, batch: Batch) -> Tensor:
        if len(batch.teachers) != len(self.heads_t):
            raise ValueError(f"CC was built for {len(self.heads_t)} teacher(s), got {len(batch.teachers)}")
        e_s = batch.student.embedding.flatten(1)
        return sum(w * cc_loss(head_s(e_s), head_t(teacher.embedding.detach().flatten(1)))
                   for w, head_s, head_t, teacher in zip(self.teacher_weights, self.heads_s, self.heads_t,
                                                         batch.teachers))


def build(ctx: TermContext, knobs: CCKnobs) -> CC:
    return CC(ctx.student.embedding, [t.embedding for t in ctx.teachers], ctx.teacher_weights, knobs.feat_dim)


register_term(TermSpec(
    name="cc",
    reference="Peng et al., ICCV 2019; RepDistiller b84f547 distiller_zoo/CC.py",
    build=build,
    knobs=CCKnobs,
    needs=Needs(frozenset({EMBEDDING})),
    multi_teacher="per_teacher",
    parts=("embedding heads",),
    paper_defaults={k: v for k, v in PAPER_DEFAULTS.items() if k != "distill.ce.weight"},
))
register_preset("cc", ("ce", "cc"), PAPER_DEFAULTS)
