"""data.labeled_fraction: hidden labels in the data layer, label-reading terms on labelled rows only, and
SimCLRv2's step 3 (KD on every image, CE on the few labelled ones) on digits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.data import UNLABELLED, build_data, make_loader
from orchestrator.data.negatives import NegativeSampler
from orchestrator.data.split import hide_labels
from orchestrator.distill.dkd import dkd_loss
from orchestrator.distill.kd import kd_loss
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput
from orchestrator.sweep.search.space import load_space, paper_points

LABELS = torch.arange(1000) % 10


def _out(logits: torch.Tensor, emb: torch.Tensor | None = None) -> ModelOutput:
    return ModelOutput([], emb if emb is not None else torch.zeros(logits.shape[0], 4), logits)


def test_hide_labels_keeps_a_stratified_seeded_nested_fraction():
    pool = torch.arange(100, 1000)  # the training split's positions in the source
    seen = hide_labels(LABELS, pool, 0.1, seed=0)
    kept = pool[seen[pool] != UNLABELLED]
    assert len(kept) == 90 and torch.equal(torch.bincount(LABELS[kept]), torch.full((10,), 9))
    assert torch.equal(seen[kept], LABELS[kept]) and torch.equal(seen[:100], LABELS[:100])  # outside the pool: kept
    assert torch.equal(hide_labels(LABELS, pool, 0.1, seed=0), seen)
    assert not torch.equal(hide_labels(LABELS, pool, 0.1, seed=1), seen)
    one = pool[hide_labels(LABELS, pool, 0.01, seed=0)[pool] != UNLABELLED]
    assert len(one) == 9 and set(one.tolist()) <= set(kept.tolist())  # 1% are among the 10%
    assert torch.equal(hide_labels(LABELS, pool, 1.0, seed=0), LABELS)
    assert int((hide_labels(LABELS, pool, 1e-6, seed=0) != UNLABELLED).sum()) == 100 + 1  # at least one
    with pytest.raises(ValueError, match="labeled_fraction"):
        hide_labels(LABELS, pool, 0.0, seed=0)


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_labeled_fraction_is_validated_naming_the_key(value):
    with pytest.raises(ConfigError, match="data.labeled_fraction"):
        load_config(None, [f"data.labeled_fraction={value}"])


def test_build_data_hides_training_labels_only():
    cfg = load_config(None, ["data.dataset=digits", "data.labeled_fraction=0.1"])
    data = build_data(cfg.data, cfg.seed)
    full = build_data(apply_overrides(cfg, {"data.labeled_fraction": 1.0}).data, cfg.seed)
    labelled = data.train_labels != UNLABELLED
    assert int(labelled.sum()) == round(0.1 * len(data.train))
    assert torch.bincount(data.train_labels[labelled], minlength=10).min() >= 12  # stratified: ~13 per class
    assert torch.equal(data.train_labels[labelled], full.train_labels[labelled])
    assert torch.equal(data.train.labels, data.train_labels) and torch.equal(data.train_eval.labels, data.train_labels)
    assert torch.equal(data.train.source_indices, full.train.source_indices)  # the same images
    assert (data.val.labels >= 0).all() and (data.test.labels >= 0).all()
    _, labels, indices = next(iter(make_loader(data.train, 2000, shuffle=False, seed=0)))
    assert torch.equal(labels, data.train_labels[indices])
    assert data.train[int(torch.nonzero(~labelled)[0])][1] == UNLABELLED


def test_ce_and_dkd_see_the_labelled_rows_and_kd_sees_every_row():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    labels = torch.tensor([3, UNLABELLED, 1, UNLABELLED, UNLABELLED, 7])
    keep = labels != UNLABELLED
    train_labels = torch.cat([labels, torch.arange(10)])
    d = build(distill_config("ce+kd+dkd", dkd__warmup=0), student_dim=4, teacher_dims=[4], train_labels=train_labels,
              num_classes=10)
    assert d.labelled_only == {"ce", "dkd"}
    terms = d(_out(s), [_out(t)], labels, torch.arange(6))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(s[keep], labels[keep]))
    torch.testing.assert_close(terms["dkd"], dkd_loss(s[keep], t[keep], labels[keep], 1.0, 8.0, 4.0))
    torch.testing.assert_close(terms["kd"], kd_loss(s, t, 4.0))
    # all labels known: nothing is masked, as before
    full = build(distill_config("ce+kd"), student_dim=4, teacher_dims=[4], train_labels=torch.arange(10))
    assert full.labelled_only == frozenset()


def test_a_batch_without_labels_contributes_zero_and_a_finite_gradient():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.randn(4, 10)
    d = build(distill_config("ce+kd"), student_dim=4, teacher_dims=[4],
              train_labels=torch.cat([torch.arange(10), torch.full((4,), UNLABELLED)]), num_classes=10)
    terms = d(_out(s), [_out(t)], torch.full((4,), UNLABELLED), torch.arange(4))
    assert terms["ce"].item() == 0.0
    sum(terms.values()).backward()
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(s.grad, torch.autograd.grad(kd_loss(s, t, 4.0), s)[0])  # KD's gradient alone


def test_crd_with_class_negatives_builds_and_its_parts_get_a_gradient_without_labels():
    train_labels = torch.cat([torch.arange(40) % 4, torch.full((60,), UNLABELLED)])
    d = build(distill_config("ce+kd+crd", crd__nce_k=16, crd__negatives_mode="exact", crd__negatives="class"),
              student_dim=8, teacher_dims=[6], train_labels=train_labels, num_classes=4)
    assert d.labelled_only == {"ce", "crd"}
    for labels in (torch.tensor([0, UNLABELLED, 2, 3]), torch.full((4,), UNLABELLED)):
        s, e = torch.randn(4, 4, requires_grad=True), torch.randn(4, 8, requires_grad=True)
        terms = d(_out(s, e), [_out(torch.randn(4, 4), torch.randn(4, 6))], labels, torch.tensor([0, 50, 2, 3]))
        sum(terms.values()).backward()
        assert all(torch.isfinite(v) for v in terms.values())
        assert all(p.grad is not None for p in d.parameters())


def test_class_negatives_are_never_unlabelled_nor_of_the_anchors_class():
    labels = torch.cat([torch.arange(30) % 3, torch.full((70,), UNLABELLED)])
    sampler = NegativeSampler(labels, 50, "class", seed=0)
    anchors = torch.tensor([0, 1, 2, 3])
    negatives = sampler.sample(anchors, labels[anchors])
    assert (labels[negatives] != UNLABELLED).all()
    assert (labels[negatives] != labels[anchors][:, None]).all()
    with pytest.raises(ValueError, match="labelled anchors"):
        sampler.sample(torch.tensor([50]), torch.tensor([UNLABELLED]))
    uniform = NegativeSampler(labels, 50, "uniform", seed=0).sample(anchors, labels[anchors])
    assert uniform.max() < 100


def test_training_labels_must_be_classes_or_unlabelled():
    cfg = distill_config("ce")
    with pytest.raises(ValueError, match="train_labels"):
        build(cfg, student_dim=4, teacher_dims=[], train_labels=torch.tensor([0, -2]), num_classes=2)
    with pytest.raises(ValueError, match="hidden"):
        build(cfg, student_dim=4, teacher_dims=[], train_labels=torch.full((3,), UNLABELLED), num_classes=2)


def _semi_supervised_accuracies(digits, seed: int) -> dict[str, float]:
    """Test top-1 of CE alone and of KD (+ CE on the labelled rows) with 10% of the digits labels, one seed."""
    cfg, _, teacher = digits  # the teacher saw every label (as the default teacher)
    cfg = apply_overrides(cfg, {"data.labeled_fraction": 0.1, "seed": seed})
    data = build_data(cfg.data, cfg.seed)
    acc = {}
    for method in ("ce", "kd"):
        trainer = Learner(apply_overrides(cfg, {"distill.method": method}), data, [teacher] if method == "kd" else [])
        for _ in range(cfg.train.epochs):
            metrics = trainer.train_one_epoch()
        assert torch.isfinite(torch.tensor(metrics["train/loss"]))
        acc[method] = trainer.evaluate("test")["acc1"]
    assert trainer.evaluate("train_eval")["acc1"] > 0.5  # scored on the labelled training samples only
    return acc


def test_kd_on_all_images_beats_ce_on_the_labelled_tenth_on_digits(digits):
    """SimCLRv2's step 3 (``distill.method=kd data.labeled_fraction=0.1``): a student distilled on every image
    beats CE on the labelled 10% alone, trained on those images with as many steps (seed 0 measured: CE 0.83,
    KD 0.92 test top-1; before CE's batches were restricted to labelled images: CE 0.69)."""
    acc = _semi_supervised_accuracies(digits, 0)
    assert acc["kd"] > 0.8 and acc["kd"] - acc["ce"] > 0.05, acc


@pytest.mark.slow
def test_kd_on_all_images_beats_ce_on_the_labelled_tenth_over_three_seeds(digits):
    """The same, paired over seeds 0, 1, 2 (measured: CE 0.83, 0.80, 0.82; KD 0.92, 0.93, 0.92)."""
    gains = []
    for seed in (0, 1, 2):
        acc = _semi_supervised_accuracies(digits, seed)
        gains.append(acc["kd"] - acc["ce"])
    assert min(gains) > 0 and sum(gains) / 3 > 0.05, gains


def test_the_semi_supervised_space_loads_with_one_percent_of_the_labels():
    cfg = load_config(None, ["data.labeled_fraction=0.01"])
    space = load_space("semi_supervised", cfg, num_train_samples=54_000)
    points = paper_points(space, cfg)
    assert [p.method for p in points] == ["kd", "dist", "crd_kd"] and all(p.deviations == {} for p in points)
    assert space.fixed["distill.crd.negatives"] == "uniform"  # CRD reads no labels there


def test_the_default_teacher_is_trained_on_every_label(monkeypatch, isolated_cache):
    from orchestrator.run import alone
    seen = {}

    def stop(cfg, data, *args, **kwargs):
        seen["labels"] = data.train_labels
        raise RuntimeError("stop before training")

    monkeypatch.setattr(alone, "_train_logged", stop)
    cfg = load_config(None, ["data.dataset=digits", "data.labeled_fraction=0.1", "model.teacher=tiny_teacher"])
    with pytest.raises(RuntimeError, match="stop before training"):
        alone.ensure_teacher(cfg, "unused")
    assert (seen["labels"] != UNLABELLED).all()


def test_pooled_sampler_draws_a_full_epoch_from_the_pool_seeded_and_split_by_rank():
    from orchestrator.data.loaders import PooledSampler

    data, pool = list(range(50)), torch.tensor([3, 7, 11, 20, 41])
    sampler = PooledSampler(data, pool, seed=4)
    first = list(sampler)
    assert len(first) == len(sampler) == 50 and set(first) == set(pool.tolist())
    assert [first[i * 5:(i + 1) * 5] for i in range(10)] != [first[:5]] * 10  # reshuffled every round
    assert sorted(first[:5]) == pool.tolist() and first == list(PooledSampler(data, pool, seed=4))
    sampler.set_epoch(1)
    assert list(sampler) != first
    ranks = [list(PooledSampler(data, pool, seed=4, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 17 for r in ranks)  # 50 padded to 51
    with pytest.raises(ValueError, match="empty"):
        PooledSampler(data, torch.tensor([], dtype=torch.long), seed=0)


@pytest.mark.parametrize("method, labelled_only", [("ce", True), ("ce+dkd", True), ("kd", False), ("ce+kd", False)])
def test_batches_hold_labelled_images_only_when_no_term_reads_the_others(digits, method, labelled_only):
    """The student alone (and any objective whose every term reads labels) trains on the labelled images, as many
    steps per epoch as on the whole split; a label-free term (KD) keeps every image in the batches."""
    cfg, _, teacher = digits
    cfg = apply_overrides(cfg, {"data.labeled_fraction": 0.1, "distill.method": method})
    data = build_data(cfg.data, cfg.seed)
    trainer = Learner(cfg, data, [teacher] if method != "ce" else [])
    labels = torch.cat([batch[1] for batch in trainer.train_loader])
    assert len(labels) == len(data.train)
    assert bool((labels != UNLABELLED).all()) == labelled_only
