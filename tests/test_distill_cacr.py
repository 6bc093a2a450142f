"""CACR (Zheng et al.): pinned to the authors' losses, closed forms, gradients, teachers, knobs, digits.

The pinned values are ``our_loss1(views, alpha, tau_pos)`` (attraction) and ``our_loss2(views, beta,
tau_neg)`` (repulsion) of github.com/JegZheng/CACR-SSL (``small_scale_experiments/losses/__init__.py`` at
commit fbc9d94810cf55c8461ed86a60e48e70e14acbbe; Euclidean cost, ``choice='full'``, no debiasing), run in
float64 on the CPU (``Tensor.cuda`` made a no-op) on the views of :func:`_views`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.distill import registry
from orchestrator.distill.base import Batch
from orchestrator.distill.cacr import cacr_attraction, cacr_loss, cacr_repulsion
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

# (views, alpha, beta, tau_pos, tau_neg) -> the authors' (attraction, repulsion)
REFERENCE = {
    (2, 1.0, 1.0, 1.0, 0.9): (2.523263233201896, -1.768376000572103),  # the CIFAR-10 command
    (2, 1.0, 1.0, 1.0, 2.0): (2.523263233201896, -1.533260562286444),  # CIFAR-100 / STL-10
    (2, 0.5, 2.0, 3.0, 0.3): (1.261631616600948, -3.9132293267139517),
    (4, 1.0, 1.0, 1.0, 0.9): (2.429972267401499, -1.6137952483886087),  # Ny = 4, the authors' default
    (4, 1.0, 1.0, 1.0, 2.0): (2.429972267401499, -1.2739564065634104),
    (4, 0.5, 2.0, 3.0, 0.3): (1.3387323919739167, -3.7710629524397468),
}


def _views(count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [F.normalize(torch.randn(8, 6, generator=g, dtype=torch.float64), dim=1) for _ in range(count)]


@pytest.mark.parametrize("setting", sorted(REFERENCE))
def test_cacr_matches_the_authors_implementation(setting):
    count, alpha, beta, tau_pos, tau_neg = setting
    views = _views(count)
    attraction, repulsion = REFERENCE[setting]
    assert cacr_attraction(views, alpha, tau_pos).item() == pytest.approx(attraction, rel=1e-12)
    assert cacr_repulsion(views, beta, tau_neg).item() == pytest.approx(repulsion, rel=1e-12)
    value = cacr_loss([v.float() for v in views], alpha, beta, tau_pos, tau_neg).item()
    assert value == pytest.approx(attraction + repulsion, rel=1e-5)


def test_closed_forms_with_two_views():
    # two views: each query has one positive (weight 1), so attraction is alpha * mean ||z_1[i] - z_2[i]||^2;
    # two samples: each anchor has one negative, so repulsion is -beta * mean ||z_1[i] - z_2[j]||^2, j != i
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    angle = 0.3
    b = torch.tensor([[math.cos(angle), math.sin(angle)], [-1.0, 0.0]], dtype=torch.float64)
    near = 2 - 2 * math.cos(angle)  # ||a0 - b0||^2
    far = 2.0  # ||a1 - b1||^2 = ||(1, 1)||^2
    assert cacr_attraction([a, b], alpha=2.0, tau_pos=5.0).item() == pytest.approx(2.0 * (near + far) / 2)
    cross_01 = (a[0] - b[1]).pow(2).sum().item()
    cross_10 = (a[1] - b[0]).pow(2).sum().item()
    assert cacr_repulsion([a, b], beta=3.0, tau_neg=7.0).item() == pytest.approx(-3.0 * (cross_01 + cross_10) / 2)
    # uniform weights (tau = 0): plain means of the costs
    c = _views(2)
    sq = (c[0][:, None] - c[1][None]).pow(2).sum(-1)
    off = sq[~torch.eye(8, dtype=torch.bool)].view(8, 7)
    assert cacr_repulsion(c, beta=1.0, tau_neg=0.0).item() == pytest.approx(-off.mean().item(), rel=1e-12)
    # hard negatives weigh most: a sharper tau_neg moves the repulsion towards the nearest negatives' cost
    nearest = -off.min(dim=1).values.mean().item()
    assert abs(cacr_repulsion(c, 1.0, 200.0).item() - nearest) < abs(cacr_repulsion(c, 1.0, 0.0).item() - nearest)


def test_bad_views_are_refused():
    with pytest.raises(ValueError, match="CACR needs"):
        cacr_loss([torch.zeros(4, 3)])
    with pytest.raises(ValueError, match="CACR needs"):
        cacr_loss([torch.zeros(4, 3), torch.zeros(4, 2)])


def _out(emb: torch.Tensor) -> ModelOutput:
    return ModelOutput([], emb, torch.zeros(emb.shape[0], 3))


def test_gradients_reach_the_student_and_heads_never_the_teacher():
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(8, 7, requires_grad=True)
    objective = build(distill_config("cacr", cacr__feat_dim=4), student_dim=5, teacher_dims=[7],
                      train_labels=torch.arange(20) % 4)
    terms = objective(_out(s), [_out(t)], torch.zeros(8, dtype=torch.long), torch.arange(8))
    terms["cacr"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())


def test_several_teachers_are_weighted():
    s, t1, t2 = torch.randn(8, 5), torch.randn(8, 7), torch.randn(8, 3)
    term = build(distill_config("cacr", cacr__feat_dim=4), student_dim=5, teacher_dims=[7, 3],
                 train_labels=torch.arange(20) % 4, teacher_weights=[1.0, 1.0]).terms["cacr"]
    parts = [cacr_loss([hs(s), ht(t)], **term.settings).item()
             for hs, ht, t in zip(term.embed_s, term.embed_t, (t1, t2))]
    value = term(Batch(_out(s), [_out(t1), _out(t2)], torch.zeros(8, dtype=torch.long), torch.arange(8)))
    assert value.item() == pytest.approx(0.5 * parts[0] + 0.5 * parts[1], rel=1e-6)


def test_declarations_and_knob_errors():
    needs = registry.teacher_needs(distill_config("cacr"))
    assert needs.fields == {"embedding"} and not needs.labels
    assert registry.paper_defaults("cacr")["distill.cacr.tau_neg"] == 0.9
    for override, key in (("distill.cacr.alpha=0", "distill.cacr.alpha"),
                          ("distill.cacr.tau_neg=-1", "distill.cacr.tau_neg"),
                          ("distill.cacr.feat_dim=0", "distill.cacr.feat_dim")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


def test_cacr_learns_digits_alongside_ce(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+cacr", "distill.cacr.feat_dim": 32})
    trainer = Learner(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert math.isfinite(metrics["train/loss_cacr"])
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1
