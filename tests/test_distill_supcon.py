"""SupCon (Khosla et al. 2020): pinned to the authors' SupConLoss, closed forms (one and two views), gradients,
no teacher, digits with one view and with two augmented views (``data.augment``).

The pinned values are ``SupConLoss(temperature, base_temperature)(features, labels)`` of
github.com/HobbitLong/SupContrast (``losses.py`` at commit 66a8fe53880d6a1084b2e4e0db0a019024d6d41a,
``contrast_mode='all'``) in float64 on the inputs of :func:`_inputs` (labels with two singleton classes,
whose anchors have no positive with one view); ``labels=None`` is the reference's SimCLR case.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.distill import registry
from orchestrator.data import build_data
from orchestrator.distill.base import Batch
from orchestrator.distill.supcon import SupCon, supcon_loss
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

# (views, temperature, base_temperature) -> the authors' SupConLoss
REFERENCE = {
    (1, 0.1, 0.07): 4.978554636057739,  # the paper's temperature, the code's base
    (1, 0.07, 0.07): 4.82490867051746,
    (1, 0.5, 0.07): 11.070459666356678,
    (2, 0.1, 0.07): 10.98632769504162,
    (2, 0.07, 0.07): 10.742865719565817,
    (2, 0.5, 0.07): 21.922800170288067,
}
SIMCLR = {1: 0.0, 2: 3.1237796882859215}  # labels=None, temperature = base = 0.5
LABELS = torch.tensor([0, 1, 1, 2, 0, 3, 1, 0])


def _inputs(views: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(8, views, 6, generator=g, dtype=torch.float64), dim=2)


@pytest.mark.parametrize("setting", sorted(REFERENCE))
def test_supcon_matches_the_authors_implementation(setting):
    views, tau, base = setting
    features = _inputs(views)
    assert supcon_loss(features, LABELS, tau, base).item() == pytest.approx(REFERENCE[setting], rel=1e-10)
    assert supcon_loss(features.float(), LABELS, tau, base).item() == pytest.approx(REFERENCE[setting], rel=1e-5)


@pytest.mark.parametrize("views", sorted(SIMCLR))
def test_distinct_labels_give_the_authors_simclr_loss(views):
    value = supcon_loss(_inputs(views), torch.arange(8), 0.5, 0.5).item()
    assert value == pytest.approx(SIMCLR[views], abs=1e-12, rel=1e-10)


def test_closed_form_on_three_unit_vectors():
    angles, tau, base = (0.0, 0.4, 2.0), 0.5, 0.25
    z = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)[:, None, :]

    def dot(i, j):
        return math.cos(angles[i] - angles[j]) / tau

    # anchors 0 and 1 are each other's only positive; anchor 2 has none (contributes 0, counted in the mean)
    l0 = -(dot(0, 1) - math.log(math.exp(dot(0, 1)) + math.exp(dot(0, 2))))
    l1 = -(dot(1, 0) - math.log(math.exp(dot(1, 0)) + math.exp(dot(1, 2))))
    expected = (tau / base) * (l0 + l1) / 3
    assert supcon_loss(z, torch.tensor([0, 0, 1]), tau, base).item() == pytest.approx(expected, rel=1e-12)


def test_closed_form_with_two_views_the_other_view_is_the_positive():
    # two images of distinct classes, two views each: each anchor's only positive is its image's other view
    angles, tau, base = ((0.0, 0.3), (1.5, 2.5)), 0.5, 0.25
    z = torch.tensor([[[math.cos(a), math.sin(a)] for a in pair] for pair in angles], dtype=torch.float64)  # (2, 2, 2)
    flat = [(i, v) for i in range(2) for v in range(2)]

    def dot(a, b):
        return math.cos(angles[a[0]][a[1]] - angles[b[0]][b[1]]) / tau

    losses = [-(dot(a, (a[0], 1 - a[1])) - math.log(sum(math.exp(dot(a, b)) for b in flat if b != a))) for a in flat]
    expected = (tau / base) * sum(losses) / 4
    assert supcon_loss(z, torch.tensor([0, 1]), tau, base).item() == pytest.approx(expected, rel=1e-12)


def test_the_term_contrasts_row_i_of_each_view_as_the_same_image():
    term = SupCon(5, feat_dim=3, head="linear")
    a, b = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = Batch(ModelOutput([], a, torch.zeros(6, 3)), [], labels, torch.arange(6), None,
                  (ModelOutput([], b, torch.zeros(6, 3)),))
    z = torch.stack([F.normalize(term.head(a), dim=1), F.normalize(term.head(b), dim=1)], dim=1)  # (B, 2, d)
    assert term(batch).item() == pytest.approx(supcon_loss(z, labels, 0.1, 0.07).item(), rel=1e-6)
    shuffled = batch._replace(student_views=(ModelOutput([], b.roll(1, 0), torch.zeros(6, 3)),))
    assert term(shuffled).item() != pytest.approx(term(batch).item(), rel=1e-3)
    term(batch).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # both views' forwards train the student
    one_view = batch._replace(student_views=())
    assert term(one_view).item() == pytest.approx(supcon_loss(z[:, :1], labels, 0.1, 0.07).item(), rel=1e-6)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="features must be"):
        supcon_loss(torch.zeros(4, 3), torch.arange(4))


def test_gradients_reach_the_student_and_head_and_no_teacher_is_read():
    cfg = distill_config("ce+supcon", supcon__feat_dim=4)
    assert not registry.needs_teacher(cfg) and registry.teacher_needs(cfg).labels
    emb = torch.randn(8, 5, requires_grad=True)
    objective = build(cfg, student_dim=5, teacher_dims=[], train_labels=torch.arange(20) % 4)
    terms = objective(ModelOutput([], emb, torch.zeros(8, 4)), [], LABELS % 4, torch.arange(8))
    assert list(terms) == ["ce", "supcon"]
    terms["supcon"].backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.terms["supcon"].parameters())


def test_knob_errors_name_the_key():
    assert registry.paper_defaults("supcon")["distill.supcon.temperature"] == 0.1
    for override, key in (("distill.supcon.temperature=0", "distill.supcon.temperature"),
                          ("distill.supcon.base_temperature=-1", "distill.supcon.base_temperature"),
                          ("distill.supcon.head=deep", "distill.supcon.head"),
                          ("distill.supcon.feat_dim=0", "distill.supcon.feat_dim")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


@pytest.mark.parametrize("augment", [False, True])
def test_supcon_learns_digits_alongside_ce(digits, augment):
    cfg, data, _ = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+supcon", "distill.supcon.feat_dim": 32, "data.augment": augment})
    data = build_data(cfg.data, cfg.seed) if augment else data
    trainer = Learner(cfg, data, [])
    assert trainer.extra_views == int(augment)  # with augmentation: two views of every image
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert math.isfinite(metrics["train/loss_supcon"])
    test = trainer.evaluate("test")
    # chance is 0.1; augmented digits learn slower (6 epochs: CE alone ~0.55, with SupCon's two views ~0.6)
    assert test["acc1"] > (0.45 if augment else 0.6), test
