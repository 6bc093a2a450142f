"""Queue-mode CRD: memory independent of N, CRD's value and gradient when the queue holds the bank's rows,
the FIFO queues, gradients, knobs and a digits run. (Two ranks: tests/test_distill_queue_distributed.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.config import ConfigError, apply_overrides, load_config
from orchestrator.distill import registry
from orchestrator.distill.crd import CRD, CRDLoss
from orchestrator.distill.crd_queue import CRDQueue, CRDQueueLoss
from orchestrator.distill.nce import contrast_scores, nce_loss
from orchestrator.engine import Trainer
from orchestrator.models.base import ModelOutput

B, DS, DT, K, D = 6, 5, 7, 10, 4


def _buffer_elements(module: torch.nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


def test_memory_does_not_grow_with_the_dataset():
    sizes = {n: _buffer_elements(CRDQueue(DS, [DT], n, queue_size=K, feat_dim=D)) for n in (100, 10**5, 14 * 10**6)}
    assert len(set(sizes.values())) == 1
    assert sizes[100] == 2 * K * D + 2 + 2  # two (K, d) queues, their pointers and the two Z
    labels = torch.arange(1000) % 10
    assert _buffer_elements(CRD(DS, [DT], labels, nce_k=K, feat_dim=D)) > 2 * 1000 * D  # the banks: O(N d)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, DS, generator=g), torch.randn(B, DT, generator=g)


def _pair(n_data: int, tau: float = 0.1):
    """A queue-mode loss and a bank-mode CRDLoss with the same heads."""
    torch.manual_seed(0)
    queue = CRDQueueLoss(DS, DT, n_data, K, D, tau, seed=3)
    bank = CRDLoss(DS, DT, n_data, D, tau, momentum=0.5)
    bank.embed_s.load_state_dict(queue.embed_s.state_dict())
    bank.embed_t.load_state_dict(queue.embed_t.state_dict())
    return queue, bank


def test_value_and_gradient_equal_crd_when_the_queue_holds_the_banks_rows():
    n_data = 50
    queue, bank = _pair(n_data)
    s, t = _inputs()
    with torch.no_grad():  # the bank holds the current keys at the batch's rows and the queue at rows B..B+K
        v_s, v_t = queue.embed_s(s), queue.embed_t(t)
        bank.memory.bank_s[:B], bank.memory.bank_t[:B] = v_s, v_t
        bank.memory.bank_s[B:B + K], bank.memory.bank_t[B:B + K] = queue.queue_s.rows, queue.queue_t.rows
    indices, negatives = torch.arange(B), torch.arange(B, B + K)
    # CRD's formula written out: NCE of exp(<v, m>/tau)/Z, Z = mean * N from this (first) batch
    ref = 0.0
    for anchor, rows in ((v_s, bank.memory.bank_t), (v_t, bank.memory.bank_s)):
        scores = contrast_scores(anchor, rows, indices, negatives, 0.1)
        ref += nce_loss(scores / (scores.mean() * n_data), n_data).item()
    s_q, s_b = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    value_q = queue(s_q, t)
    value_b = bank(s_b, t, indices, negatives)
    assert value_q.item() == pytest.approx(ref, rel=1e-5)
    assert value_q.item() == pytest.approx(value_b.item(), rel=1e-5)
    torch.testing.assert_close(queue.z.z_s, bank.memory.z_s)
    value_q.backward()
    value_b.backward()
    torch.testing.assert_close(s_q.grad, s_b.grad, rtol=1e-4, atol=1e-6)
    for name in ("embed_s", "embed_t"):
        torch.testing.assert_close(getattr(queue, name).linear.weight.grad, getattr(bank, name).linear.weight.grad,
                                   rtol=1e-4, atol=1e-6)


def test_noise_size_cancels_from_the_value():
    # P / (P + K/N) with Z = mean * N is e / (e + K mean(e)): N cancels, but for the reference's eps (1e-7)
    # in the denominator, which adds eps N / K to terms of order 1: any dataset size, no (N, d) buffer.
    values = []
    for n_data in (100, 20_000):
        torch.manual_seed(0)
        values.append(CRDQueueLoss(DS, DT, n_data, K, D, 0.1, seed=3)(*_inputs()).item())
    assert values[0] == pytest.approx(values[1], rel=1e-3)


def test_training_enqueues_both_projections_and_eval_changes_nothing():
    queue, _ = _pair(50)
    s, t = _inputs()
    before = [q.rows.clone() for q in (queue.queue_s, queue.queue_t)]
    queue.eval()
    with torch.no_grad():
        queue(s, t)
    assert all(torch.equal(q.rows, b) for q, b in zip((queue.queue_s, queue.queue_t), before))
    assert queue.z.z_s.item() < 0  # Z is set only in training
    queue.train()
    queue(s, t)
    with torch.no_grad():
        torch.testing.assert_close(queue.queue_s.rows[:B], queue.embed_s(s))
        torch.testing.assert_close(queue.queue_t.rows[:B], queue.embed_t(t))
    assert int(queue.queue_s.ptr) == B and torch.equal(queue.queue_t.rows[B:], before[1][B:])


def _out(emb: torch.Tensor) -> ModelOutput:
    return ModelOutput([], emb, torch.zeros(emb.shape[0], 3))


def test_gradients_reach_the_student_and_heads_never_the_teacher():
    s, t = _inputs()
    s.requires_grad_(True)
    t.requires_grad_(True)
    objective = build(distill_config("crd_queue", crd_queue__queue_size=K, crd_queue__feat_dim=D),
                      student_dim=DS, teacher_dims=[DT], train_labels=torch.arange(40) % 4)
    terms = objective(_out(s), [_out(t)], torch.zeros(B, dtype=torch.long), torch.arange(B))
    assert list(terms) == ["crd_queue"] and objective.weights == {"crd_queue": 0.8}
    terms["crd_queue"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())


def test_several_teachers_are_weighted():
    s, t = _inputs()
    t2 = torch.randn(B, 3)
    term = build(distill_config("crd_queue", crd_queue__queue_size=K, crd_queue__feat_dim=D), student_dim=DS,
                 teacher_dims=[DT, 3], train_labels=torch.arange(40) % 4, teacher_weights=[1.0, 3.0]).terms["crd_queue"]
    term.eval()
    parts = [loss(s, x).item() for loss, x in zip(term.crds, (t, t2))]
    from orchestrator.distill.base import Batch

    value = term(Batch(_out(s), [_out(t), _out(t2)], torch.zeros(B, dtype=torch.long), torch.arange(B)))
    assert value.item() == pytest.approx(0.25 * parts[0] + 0.75 * parts[1], rel=1e-6)


def test_declarations_and_knob_errors():
    cfg = distill_config("crd_queue")
    needs = registry.teacher_needs(cfg)
    assert needs.fields == {"embedding"} and not needs.labels and registry.data_problem(cfg, 10) is None
    assert registry.paper_defaults("crd_queue")["distill.crd_queue.queue_size"] == 16384
    for override, key in (("distill.crd_queue.queue_size=0", "distill.crd_queue.queue_size"),
                          ("distill.crd_queue.nce_t=0", "distill.crd_queue.nce_t"),
                          ("distill.crd_queue.z_mode=running", "distill.crd_queue.z_mode")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


def test_crd_queue_learns_digits(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+crd_queue", "distill.crd_queue.queue_size": 256})
    trainer = Trainer(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert math.isfinite(metrics["train/loss_crd_queue"])
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1
