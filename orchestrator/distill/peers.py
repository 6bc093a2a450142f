"""Online distillation without a fixed teacher: P networks of the student's architecture train together.

Deep Mutual Learning (DML; Zhang et al., CVPR 2018): each network minimises its own cross-entropy plus the
mean KL from the other networks' (detached) class distributions to its own (summed over classes, averaged
over the batch). Distill-on-the-Go (DoGo; Bhat et al., CVPRW 2021; code NeurAI-Lab/DoGo) matches in-batch
similarity distributions instead: row i of softmax_j(cos(z_i, z_j) / tau) over the batch, the KL averaged
over all B x B entries as the authors' ``criterion/kl.py``. The authors contrast two augmented views: row i
is z_x(i) of one view against z_y(j) of the other. DoGo asks for two views (``Needs.student_views=2``); with
``data.augment`` the Learner gives the student's second view and its images (every peer runs on both views
stacked, as the student), so it is theirs. Without augmentation both sides are the batch's one view
(self-similarity included, as theirs includes the positive pair).

The student is network 0 (its cross-entropy is the objective's ``ce`` term); the term holds the other P - 1
networks (its parts) and returns the student's KL to them plus each peer's own loss (CE + KL to the others),
so one optimiser step trains every network. The Learner evaluates every network; the best one on validation
is the trial's student. A frozen teacher may be used alongside (e.g. ``ce+kd+dml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orchestrator.distill.base import Batch, Term, TermContext, split_views
from orchestrator.distill.checks import KnobError, check_positive, check_weight
from orchestrator.distill.registry import Needs, TermSpec, register_term
from orchestrator.models.base import ModelOutput


@dataclass
class PeerKnobs:
    """``distill.dml.*`` / ``distill.dogo.*``: peers P (networks trained together, the student included),
    temperature of the distributions, the term's weight."""

    peers: int = 2  # P: networks trained together, the student included
    temperature: float = 1.0  # the temperature of the distributions the peers match
    weight: float = 1.0  # the term's weight

    def __post_init__(self):
        if isinstance(self.peers, bool) or not isinstance(self.peers, int) or self.peers < 2:
            raise KnobError("peers", self.peers, "an integer >= 2 (the student and at least one peer)")
        check_positive("temperature", self.temperature)
        check_weight("weight", self.weight)


@dataclass
class DoGoKnobs(PeerKnobs):
    """``distill.dogo.*``: as DML's, the similarity temperature 0.1 by default (the authors')."""

    temperature: float = 0.1


def class_log_probs(out: ModelOutput, temperature: float) -> Tensor:
    """(B, C) log-softmax of the logits / T (DML)."""
    return F.log_softmax(out.logits.float() / temperature, dim=1)


def similarity_log_probs(out: ModelOutput, temperature: float, other: ModelOutput | None = None) -> Tensor:
    """(B, B) row-wise log-softmax of the cosine similarities of ``out``'s embeddings (rows) to ``other``'s
    (columns: the same images' other view; default ``out`` itself) / T (DoGo)."""
    z = F.normalize(out.embedding.float().flatten(1), dim=1)
    y = z if other is None else F.normalize(other.embedding.float().flatten(1), dim=1)
    return F.log_softmax(z @ y.t() / temperature, dim=1)


def mutual_kl(log_probs: list[Tensor], k: int, reduction: str) -> Tensor:
    """Mean over the other networks l != k of KL(p_l (detached) || p_k): summed and divided by the batch
    size ("batchmean") or by the number of entries ("mean")."""
    others = [lp.detach() for i, lp in enumerate(log_probs) if i != k]
    size = log_probs[k].shape[0] if reduction == "batchmean" else log_probs[k].numel()
    total = sum(F.kl_div(log_probs[k], lp, reduction="sum", log_target=True) for lp in others)
    return total / (size * len(others))


class MutualLearning(Term):
    """The student's KL to its peers plus every peer's CE and KL to the others.

    Args:
        make_peer: builds one network of the student's architecture.
        peers: P, networks trained together (the student included).
        temperature: T of the distributions.
        log_probs: ``(ModelOutput, T) -> (B, K)`` log-distribution (class_log_probs or similarity_log_probs;
            the latter also ``(ModelOutput, T, other view's ModelOutput)``, for the term that asks for views).
        reduction: of each KL: "batchmean" (DML) or "mean" over all entries (DoGo).
    """

    def __init__(self, make_peer: Callable[[], nn.Module], peers: int, temperature: float,
                 log_probs: Callable[[ModelOutput, float], Tensor], reduction: str):
        super().__init__()
        self.peers = nn.ModuleList(make_peer() for _ in range(peers - 1))
        self.temperature = check_positive("temperature", temperature)
        self.log_probs, self.reduction = log_probs, reduction

    def networks(self) -> dict[str, nn.Module]:
        return {f"peer{i + 1}": peer for i, peer in enumerate(self.peers)}

    def forward(self, batch: Batch) -> Tensor:
        if batch.images is None:
            raise ValueError("mutual learning needs the input images in the batch (the peers run on them)")
        if batch.student_views:  # DoGo with augmentation: every network on both views, one against the other
            pairs = [split_views(peer(torch.cat([batch.images, batch.view_images[0]])), 2) for peer in self.peers]
            outs = [batch.student] + [x for x, _ in pairs]
            others = [batch.student_views[0]] + [y for _, y in pairs]
            log_probs = [self.log_probs(o, self.temperature, y) for o, y in zip(outs, others)]
        else:
            outs = [batch.student] + [peer(batch.images) for peer in self.peers]
            log_probs = [self.log_probs(o, self.temperature) for o in outs]
        loss = mutual_kl(log_probs, 0, self.reduction)
        for k, out in enumerate(outs[1:], start=1):
            loss = loss + F.cross_entropy(out.logits, batch.labels) + mutual_kl(log_probs, k, self.reduction)
        return loss


def _builder(log_probs: Callable[[ModelOutput, float], Tensor], reduction: str):
    def build(ctx: TermContext, knobs: PeerKnobs) -> MutualLearning:
        if ctx.make_student is None:
            raise ValueError("mutual learning needs make_student in its build context (the Learner gives it)")
        return MutualLearning(ctx.make_student, knobs.peers, knobs.temperature, log_probs, reduction)

    return build


# Paper settings: DML trains 2 networks with T = 1 and weight 1 (Zhang et al. 2018, Eq. 1-2);
# DoGo: 2 networks, similarity temperature 0.1, weight 1 (NeurAI-Lab/DoGo e303820, criterion/kl.py, train.py).
register_term(TermSpec(
    name="dml", reference="Zhang et al., CVPR 2018 (Deep Mutual Learning); closed form",
    build=_builder(class_log_probs, "batchmean"), knobs=PeerKnobs,
    needs=Needs(labels=True), multi_teacher="outputs", parts=("P-1 peer networks",),
    paper_defaults={"distill.dml.peers": 2, "distill.dml.temperature": 1.0, "distill.dml.weight": 1.0},
))
register_term(TermSpec(
    name="dogo", reference="Bhat et al., CVPRW 2021 (Distill on the Go); NeurAI-Lab/DoGo e303820 criterion/kl.py",
    build=_builder(similarity_log_probs, "mean"), knobs=DoGoKnobs,
    needs=Needs(labels=True, student_views=2), multi_teacher="outputs", parts=("P-1 peer networks",),
    paper_defaults={"distill.dogo.peers": 2, "distill.dogo.temperature": 0.1, "distill.dogo.weight": 1.0},
))
