"""CRD's memories and sampling modes: the queue (``distill.crd.memory=queue``: memory independent of N, the
bank's value and gradient when the queue holds the bank's rows, FIFO, K of Q rows), relaxed positives
(``positive=relax``, pinned to RepDistiller), uniform negatives without labels (``negatives=uniform``), the
labels each mode reads, knob errors and digits runs. (Two ranks: tests/test_distill_queue_distributed.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.data import UNLABELLED, build_data
from orchestrator.data.negatives import NegativeSampler
from orchestrator.distill import registry
from orchestrator.distill.base import Batch
from orchestrator.distill.crd import CRD, CRDLoss
from orchestrator.distill.nce import contrast_dots, contrast_scores, nce_loss
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

B, DS, DT, K, D = 6, 5, 7, 10, 4


def _buffer_elements(module: torch.nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


def _queue_term(n_data: int, queue_size: int = K, nce_k: int = K, **kw) -> CRD:
    return CRD(DS, [DT], torch.arange(n_data) % 10, nce_k=nce_k, feat_dim=D, memory="queue", queue_size=queue_size,
               negatives_mode="shared", **kw)


def test_queue_memory_does_not_grow_with_the_dataset():
    sizes = {n: _buffer_elements(_queue_term(n)) for n in (100, 10**5, 14 * 10**6)}
    assert len(set(sizes.values())) == 1
    assert sizes[100] == 2 * K * D + 2 + 2  # two (K, d) queues, their pointers and the two Z
    labels = torch.arange(1000) % 10
    assert _buffer_elements(CRD(DS, [DT], labels, nce_k=K, feat_dim=D)) > 2 * 1000 * D  # the banks: O(N d)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, DS, generator=g), torch.randn(B, DT, generator=g)


def _pair(n_data: int, tau: float = 0.1):
    """A queue-memory CRDLoss (Q = K) and a bank CRDLoss with the same heads."""
    torch.manual_seed(0)
    queue = CRDLoss(DS, DT, n_data, D, tau, seed=3, queue_size=K)
    bank = CRDLoss(DS, DT, n_data, D, tau, momentum=0.5)
    bank.embed_s.load_state_dict(queue.embed_s.state_dict())
    bank.embed_t.load_state_dict(queue.embed_t.state_dict())
    return queue, bank


def test_queue_value_and_gradient_equal_the_banks_when_the_queue_holds_the_banks_rows():
    n_data = 50
    queue, bank = _pair(n_data)
    s, t = _inputs()
    mem = queue.memory
    with torch.no_grad():  # the bank holds the current keys at the batch's rows and the queue at rows B..B+K
        v_s, v_t = queue.embed_s(s), queue.embed_t(t)
        bank.memory.bank_s[:B], bank.memory.bank_t[:B] = v_s, v_t
        bank.memory.bank_s[B:B + K], bank.memory.bank_t[B:B + K] = mem.queue_s.rows, mem.queue_t.rows
    indices, negatives = torch.arange(B), torch.arange(B, B + K)
    # CRD's formula written out: NCE of exp(<v, m>/tau)/Z, Z = mean * N from this (first) batch
    ref = 0.0
    for anchor, rows in ((v_s, bank.memory.bank_t), (v_t, bank.memory.bank_s)):
        scores = contrast_scores(anchor, rows, indices, negatives, 0.1)
        ref += nce_loss(scores / (scores.mean() * n_data), n_data).item()
    s_q, s_b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    value_q = queue(s_q, t, indices, None)
    value_b = bank(s_b, t, indices, negatives)
    assert value_q.item() == pytest.approx(ref, rel=1e-5)
    assert value_q.item() == pytest.approx(value_b.item(), rel=1e-5)
    torch.testing.assert_close(mem.z_s, bank.memory.z_s)
    value_q.backward()
    value_b.backward()
    torch.testing.assert_close(s_q.grad, s_b.grad, rtol=1e-4, atol=1e-6)
    for name in ("embed_s", "embed_t"):
        torch.testing.assert_close(getattr(queue, name).linear.weight.grad, getattr(bank, name).linear.weight.grad,
                                   rtol=1e-4, atol=1e-6)


def test_queue_noise_size_cancels_from_the_value():
    # P / (P + K/N) with Z = mean * N is e / (e + K mean(e)): N cancels, but for the reference's eps (1e-7)
    # in the denominator, which adds eps N / K to terms of order 1: any dataset size, no (N, d) buffer.
    values = []
    for n_data in (100, 20_000):
        torch.manual_seed(0)
        values.append(CRDLoss(DS, DT, n_data, D, 0.1, seed=3, queue_size=K)(*_inputs(), torch.arange(B), None).item())
    assert values[0] == pytest.approx(values[1], rel=1e-3)


def test_training_enqueues_both_projections_and_eval_changes_nothing():
    queue, _ = _pair(50)
    mem = queue.memory
    s, t = _inputs()
    before = [q.rows.clone() for q in (mem.queue_s, mem.queue_t)]
    queue.eval()
    with torch.no_grad():
        queue(s, t, torch.arange(B), None)
    assert all(torch.equal(q.rows, b) for q, b in zip((mem.queue_s, mem.queue_t), before))
    assert mem.z_s.item() < 0  # Z is set only in training
    queue.train()
    queue(s, t, torch.arange(B), None)
    with torch.no_grad():
        torch.testing.assert_close(mem.queue_s.rows[:B], queue.embed_s(s))
        torch.testing.assert_close(mem.queue_t.rows[:B], queue.embed_t(t))
    assert int(mem.queue_s.ptr) == B and torch.equal(mem.queue_t.rows[B:], before[1][B:])


def test_a_queue_longer_than_k_contrasts_k_of_its_rows_drawn_per_batch():
    n_data, q = 40, 13
    torch.manual_seed(0)
    term = _queue_term(n_data, queue_size=q, nce_k=K, seed=5)
    loss = term.crds[0]
    mem = loss.memory
    s, t = _inputs()
    rows = NegativeSampler(torch.full((q,), UNLABELLED), K, "uniform", 5).sample_shared()  # the term's first draw
    with torch.no_grad():
        v_s, v_t = loss.embed_s(s), loss.embed_t(t)
        pools = (mem.queue_t.rows.clone(), mem.queue_s.rows.clone())
    term.eval()  # Z from this batch, nothing stored
    value = term(Batch(_out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B)))
    ref = 0.0
    for anchor, key, pool in ((v_s, v_t, pools[0]), (v_t, v_s, pools[1])):
        scores = torch.exp(torch.cat([(anchor * key).sum(1, keepdim=True), anchor @ pool[rows].t()], 1) / 0.07)
        ref += nce_loss(scores / (scores.mean() * n_data), n_data).item()
    assert rows.unique().numel() == K and value.item() == pytest.approx(ref, rel=1e-5)
    assert term.sampler.counter == 1
    with pytest.raises(ValueError, match="queue_size"):
        _queue_term(n_data, queue_size=K - 1)


def _out(emb: torch.Tensor) -> ModelOutput:
    return ModelOutput([], emb, torch.zeros(emb.shape[0], 3))


def test_queue_gradients_reach_the_student_and_heads_never_the_teacher():
    s, t = _inputs()
    s.requires_grad_(True)
    t.requires_grad_(True)
    objective = build(distill_config("crd", crd__memory="queue", crd__nce_k=K, crd__feat_dim=D), student_dim=DS,
                      teacher_dims=[DT], train_labels=torch.arange(40) % 4)
    terms = objective(_out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B))
    assert list(terms) == ["ce", "crd"] and objective.weights == {"ce": 1.0, "crd": 0.8}
    terms["crd"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    keys = {id(p) for m in objective.terms["crd"].crds for p in (*m.key_s.parameters(), *m.key_t.parameters())}
    assert keys and all(p.grad is None for p in objective.parameters() if id(p) in keys)  # MoCo key heads
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters() if id(p) not in keys)


def test_queue_keys_come_from_momentum_heads_updated_every_training_step():
    s, t = _inputs()
    m = 0.9
    term = build(distill_config("crd", crd__memory="queue", crd__nce_k=K, crd__feat_dim=D, crd__key_momentum=m),
                 student_dim=DS, teacher_dims=[DT], train_labels=torch.arange(40) % 4).terms["crd"]
    loss = term.crds[0]
    with torch.no_grad():  # online heads move away from the key heads (a copy of them at build time)
        for p in (*loss.embed_s.parameters(), *loss.embed_t.parameters()):
            p.add_(0.5)
    online = [p.detach().clone() for p in (*loss.embed_s.parameters(), *loss.embed_t.parameters())]
    before = [p.detach().clone() for p in (*loss.key_s.parameters(), *loss.key_t.parameters())]
    term.train()
    term(Batch(_out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B)))
    after = [p.detach() for p in (*loss.key_s.parameters(), *loss.key_t.parameters())]
    for k0, k1, q in zip(before, after, online):
        assert torch.allclose(k1, m * k0 + (1 - m) * q, atol=1e-6)
    with torch.no_grad():  # the queued rows are the key heads' projections, not the online heads'
        assert torch.allclose(loss.memory.queue_t.rows[:B], loss.key_t(t), atol=1e-6)
        assert not torch.allclose(loss.memory.queue_t.rows[:B], loss.embed_t(t), atol=1e-3)
    term.eval()  # evaluation moves no key head
    term(Batch(_out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B)))
    assert all(torch.equal(a, p) for a, p in zip(after, (*loss.key_s.parameters(), *loss.key_t.parameters())))
    with pytest.raises(ConfigError, match="key_momentum"):
        distill_config("crd", crd__memory="queue", crd__key_momentum=1.0)


def test_queue_with_several_teachers_is_weighted():
    s, t = _inputs()
    t2 = torch.randn(B, 3)
    term = build(distill_config("crd", crd__memory="queue", crd__nce_k=K, crd__feat_dim=D), student_dim=DS,
                 teacher_dims=[DT, 3], train_labels=torch.arange(40) % 4, teacher_weights=[1.0, 3.0]).terms["crd"]
    term.eval()
    parts = [loss(s, x, torch.arange(B), None).item() for loss, x in zip(term.crds, (t, t2))]
    value = term(Batch(_out(s), [_out(t), _out(t2)], torch.zeros(B, dtype=torch.long), torch.arange(B)))
    assert value.item() == pytest.approx(0.25 * parts[0] + 0.75 * parts[1], rel=1e-6)


@pytest.mark.parametrize("queue_size", [K, K + 7])  # all rows (no sampler), or K of Q drawn per batch
def test_queue_state_dict_round_trip(queue_size):
    def make(seed: int):
        torch.manual_seed(seed)
        return build(distill_config("crd", crd__memory="queue", crd__nce_k=K, crd__queue_size=queue_size,
                                    crd__feat_dim=D), student_dim=DS, teacher_dims=[DT],
                     train_labels=torch.arange(40) % 4, seed=seed)

    def batch(g):
        s, t = torch.randn(B, DS, generator=g), torch.randn(B, DT, generator=g)
        return _out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B)

    g = torch.Generator().manual_seed(0)
    a = make(0)
    for _ in range(2):
        a(*batch(g))
    b = make(9)
    b.load_state_dict(a.state_dict())
    assert "terms.crd.crds.0.memory.queue_s.rows" in a.state_dict()
    step = batch(g)
    assert torch.equal(a(*step)["crd"], b(*step)["crd"])  # same queues, Z and (with Q > K) the same draw
    assert torch.equal(a.terms["crd"].crds[0].memory.queue_t.rows, b.terms["crd"].crds[0].memory.queue_t.rows)


# ---------------------------------------------------------------- relaxed positives (RepDistiller's 'relax')

N_REF, C_REF, K_REF, B_REF = 30, 3, 5, 4
# RepDistiller (github.com/HobbitLong/RepDistiller at b84f547c5db6a35318d4671d7d5c4de74c822403) crd/criterion.py
# CRDLoss(s_dim=5, t_dim=7, feat_dim=4, nce_k=5, nce_t=0.1, nce_m=0.5, n_data=30) with this test's heads and
# banks copied in, forward(f_s, f_t, idx, contrast_idx = [relaxed positive, negatives]) over the two steps of
# _relax_case (its dataset/cifar100.py 'relax' mode: contrast_idx[:, 0] a same-class sample, the memory
# updated at idx); run on CPU (AliasMethod.cuda() made a no-op). Values and the banks after the steps:
REFERENCE_LOSSES = (19.562488555908203, 19.34515380859375)
REFERENCE_BANK_SUMS = (46.65773010253906, 52.44923782348633)  # |memory_v1|.sum(), |memory_v2|.sum() after both steps


def _relax_case():
    """(CRDLoss, labels (N,), two steps of (f_s, f_t, idx, positives, negatives)) with seeded draws."""
    torch.manual_seed(11)
    crd = CRDLoss(DS, DT, N_REF, feat_dim=D, nce_t=0.1, momentum=0.5, seed=2)
    labels = torch.arange(N_REF) % C_REF
    sampler = NegativeSampler(labels, K_REF, "class", seed=4, same_class=True)
    g = torch.Generator().manual_seed(12)
    steps = []
    for _ in range(2):
        idx = torch.randperm(N_REF, generator=g)[:B_REF]
        steps.append((torch.randn(B_REF, DS, generator=g), torch.randn(B_REF, DT, generator=g), idx,
                      sampler.sample_positives(labels[idx]), sampler.sample(idx, labels[idx])))
    return crd, labels, steps


def test_relaxed_positives_are_same_class_samples_drawn_reproducibly():
    labels = torch.cat([torch.arange(60) % 4, torch.full((20,), UNLABELLED)])
    sampler = NegativeSampler(labels, 8, "uniform", seed=0, same_class=True)
    anchors = torch.tensor([0, 1, 2, 3, 4, 5])
    draws = torch.stack([sampler.sample_positives(labels[anchors]) for _ in range(200)])  # (200, 6)
    assert (labels[draws] == labels[anchors]).all()  # never unlabelled, never another class
    assert all(draws[:, i].unique().numel() == 15 for i in range(6))  # every member of the class, the anchor too
    again = NegativeSampler(labels, 8, "uniform", seed=0, same_class=True)
    assert torch.equal(again.sample_positives(labels[anchors]), draws[0])
    with pytest.raises(ValueError, match="labelled anchors"):
        sampler.sample_positives(torch.tensor([UNLABELLED]))
    with pytest.raises(ValueError, match="same_class"):
        NegativeSampler(labels, 8, "uniform").sample_positives(labels[anchors])


def test_relaxed_positive_values_match_repdistiller():
    crd, _, steps = _relax_case()
    crd.train()
    for (s, t, idx, pos, neg), expected in zip(steps, REFERENCE_LOSSES):
        value = crd(s, t, idx, neg, positives=pos)
        assert value.item() == pytest.approx(expected, rel=1e-5)
    sums = (crd.memory.bank_s.abs().sum().item(), crd.memory.bank_t.abs().sum().item())
    assert sums == pytest.approx(REFERENCE_BANK_SUMS, rel=1e-5)


def test_the_relax_term_draws_same_class_positives_and_class_negatives():
    labels = torch.arange(40) % 4
    term = build(distill_config("crd", crd__positive="relax", crd__negatives_mode="exact", crd__nce_k=8,
                                crd__feat_dim=D), student_dim=DS, teacher_dims=[DT], train_labels=labels).terms["crd"]
    idx = torch.arange(0, 40, 3)
    for _ in range(5):
        pos = term.draw_positives(labels[idx], idx.device)
        neg = term.draw_negatives(idx, labels[idx])
        assert (labels[pos] == labels[idx]).all() and (labels[neg] != labels[idx][:, None]).all()
    exact = build(distill_config("crd", crd__nce_k=8), student_dim=DS, teacher_dims=[DT], train_labels=labels)
    assert exact.terms["crd"].draw_positives(labels[idx], idx.device) is None  # the sample's own row


def test_relax_reads_the_positives_bank_row_and_updates_the_anchors_own():
    crd, labels, steps = _relax_case()
    s, t, idx, pos, neg = steps[0]
    assert not torch.equal(pos, idx) and (labels[pos] == labels[idx]).all()
    before = crd.memory.bank_t.clone()
    v_s = crd.embed_s(s).detach()
    crd.eval()
    dots, _ = contrast_dots(v_s, crd.memory.bank_t, pos, neg)
    torch.testing.assert_close(dots[:, 0], (v_s * before[pos]).sum(1))  # the positive: the same-class row
    crd.train()
    crd(s, t, idx, neg, positives=pos)
    changed = (crd.memory.bank_t != before).any(1).nonzero().flatten()
    assert set(changed.tolist()) == set(idx.tolist())  # the anchors' own rows are updated, as the reference


# ---------------------------------------------------------------- which labels each mode reads


@pytest.mark.parametrize("knobs, reads", [
    ({}, False),  # shared negatives: uniform, one set per batch
    ({"crd__negatives_mode": "exact"}, True),  # class negatives per anchor (the reference)
    ({"crd__negatives_mode": "exact", "crd__negatives": "uniform"}, False),
    ({"crd__positive": "relax"}, True),
    ({"crd__memory": "queue"}, False),
])
def test_crd_reads_labels_only_for_class_negatives_or_relaxed_positives(knobs, reads):
    cfg = distill_config("kd+crd", crd__nce_k=8, **knobs)
    assert registry.teacher_needs(cfg).labels == reads
    train_labels = torch.cat([torch.arange(20) % 4, torch.full((20,), UNLABELLED)])
    objective = build(cfg, student_dim=DS, teacher_dims=[DT], train_labels=train_labels, num_classes=4)
    assert ("crd" in objective.labelled_only) == reads


def test_knob_errors_name_the_key():
    for overrides, key in (
        (["distill.crd.memory=ring"], "distill.crd.memory"),
        (["distill.crd.memory=queue", "distill.crd.nce_k=64", "distill.crd.queue_size=32"], "distill.crd.queue_size"),
        (["distill.crd.memory=queue", "distill.crd.queue_size=0"], "distill.crd.queue_size"),
        (["distill.crd.memory=queue", "distill.crd.negatives_mode=exact"], "distill.crd.negatives_mode"),
        (["distill.crd.memory=queue", "distill.crd.positive=relax"], "distill.crd.positive"),
        (["distill.crd.positive=near"], "distill.crd.positive"),
        (["distill.crd.negatives=hard"], "distill.crd.negatives"),
        (["data.negatives=uniform"], "data.negatives.*distill.crd.negatives"),
        (["distill.crd_queue.queue_size=8"], "distill.crd_queue.*memory=queue"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_config(None, overrides)
    cfg = distill_config("crd", crd__memory="queue", crd__nce_k=64)
    assert registry.data_problem(cfg, 10) is None  # a queue may hold more rows than the dataset
    assert registry.data_problem(distill_config("crd", crd__nce_k=64), 10)[0] == "distill.crd.nce_k"
    with pytest.raises(ValueError, match="row indices"):
        contrast_dots(torch.randn(2, 3), torch.randn(9, 3), torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.long))


# ---------------------------------------------------------------- digits runs


def _train(cfg, data, teacher) -> tuple[Learner, dict]:
    trainer = Learner(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    return trainer, metrics


def test_queue_crd_learns_digits(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "crd", "distill.crd.memory": "queue"})  # Q = K = 256
    trainer, metrics = _train(cfg, data, teacher)
    assert math.isfinite(metrics["train/loss_crd"])
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1


def test_uniform_negatives_see_the_unlabelled_images_on_digits(digits):
    """data.labeled_fraction=0.1: exact uniform-negative CRD reads no labels, so it trains on (and writes the
    bank rows of) the unlabelled 90% too, while CE sees the labelled 10%."""
    cfg, _, teacher = digits
    cfg = apply_overrides(cfg, {"data.labeled_fraction": 0.1, "distill.method": "crd_kd",
                                "distill.crd.negatives_mode": "exact", "distill.crd.negatives": "uniform",
                                "train.epochs": 3})
    data = build_data(cfg.data, cfg.seed)
    unlabelled = (data.train_labels == UNLABELLED).nonzero().flatten()
    trainer = Learner(cfg, data, [teacher])
    assert trainer.objective.labelled_only == {"ce"}
    bank = trainer.objective.terms["crd"].crds[0].memory.bank_s
    before = bank[unlabelled].clone()
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert math.isfinite(metrics["train/loss_crd"])
    assert (bank[unlabelled] != before).any(1).float().mean() > 0.99  # every unlabelled row was seen
    assert trainer.evaluate("test")["acc1"] > 0.5  # chance is 0.1
