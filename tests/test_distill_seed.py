"""SEED (Fang et al. 2021): pinned to the authors' implementation, a closed form, the queue, gradients, digits.

The pinned values are the authors' ``SEED`` module and ``soft_cross_entropy`` (github.com/jacobswan1/SEED,
``seed/builder.py`` and ``tools/utils.py`` at commit f236cac7c7fe41c74237097e5cf0d89a664c7a09), run in
float64 with ``dist=False, mlp=False``, a student network that applies our head (same weights) to the
first Ds columns of the "image", a teacher network that returns the last Dt columns, and its queue set to
our initial queue (transposed), on the inputs of :func:`_inputs` and the heads built right after
``torch.manual_seed(1)`` as in :func:`_term`. Two steps: the second sees the queue the first left.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill_helpers import build, distill_config
from orchestrator.config.schema import ConfigError, apply_overrides, load_config
from orchestrator.distill import registry
from orchestrator.distill.queue import FeatureQueue
from orchestrator.distill.seed import SEEDLoss, seed_loss
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

B, DS, DT, K = 8, 6, 5, 16
# (student_t, teacher_t, head) -> the authors' loss at steps 1 and 2
REFERENCE = {
    (0.2, 1e-4, "mlp"): (5.354345808734299, 5.4899243358195715),  # the paper's temperatures and head
    (0.2, 0.01, "linear"): (4.070057511508281, 4.813924966266219),
    (0.5, 0.1, "mlp"): (3.5381476918060537, 3.4834262163899172),
}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, B, Ds) student and (2, B, Dt) teacher embeddings of two steps."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, B, DS, generator=g), torch.randn(2, B, DT, generator=g)


def _term(student_t: float, teacher_t: float, head: str) -> SEEDLoss:
    torch.manual_seed(1)
    return SEEDLoss(DS, DT, K, student_t, teacher_t, head, seed=0)


@pytest.mark.parametrize("setting", sorted(REFERENCE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_seed_matches_the_authors_implementation(setting, dtype):
    term = _term(*setting).to(dtype)
    students, teachers = _inputs()
    for step, expected in enumerate(REFERENCE[setting]):
        value = term(students[step].to(dtype), teachers[step].to(dtype)).item()
        assert value == pytest.approx(expected, rel=1e-9 if dtype == torch.float64 else 2e-5)


def _unit(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle), math.sin(angle)]], dtype=torch.float64)


def test_closed_form_with_a_one_hot_teacher():
    # A tiny teacher temperature puts all the teacher's mass on its own column (<t, t> = 1 > <t, q>):
    # the loss is -log p_s(own column) = log(1 + exp((<s, q> - <s, t>) / tau_s)).
    s, t, q = _unit(0.3), _unit(0.0), _unit(1.0)
    tau = 0.2
    expected = math.log(1 + math.exp((math.cos(0.7) - math.cos(0.3)) / tau))
    assert seed_loss(s, t, q, tau, 1e-4).item() == pytest.approx(expected, rel=1e-12)
    # equal temperatures and a student equal to the teacher: the cross-entropy is the teacher's entropy
    logits = torch.tensor([1.0, math.cos(1.0)], dtype=torch.float64) / 0.5
    entropy = -(F.softmax(logits, 0) * F.log_softmax(logits, 0)).sum().item()
    assert seed_loss(t, t, q, 0.5, 0.5).item() == pytest.approx(entropy, rel=1e-12)


def test_queue_is_fifo_and_keeps_the_last_rows():
    queue = FeatureQueue(5, 2, seed=0)
    first = torch.arange(6.0).view(3, 2)
    queue.enqueue(first)
    assert int(queue.ptr) == 3 and torch.equal(queue.rows[:3], first)
    queue.enqueue(10 + torch.arange(6.0).view(3, 2))  # wraps: rows 3, 4, then 0
    assert int(queue.ptr) == 1
    assert torch.equal(queue.rows[[3, 4, 0]], 10 + torch.arange(6.0).view(3, 2))
    queue.enqueue(torch.arange(14.0).view(7, 2))  # longer than K: its last 5 rows, oldest first
    assert int(queue.ptr) == 1 and torch.equal(queue.rows[[1, 2, 3, 4, 0]], torch.arange(4.0, 14.0).view(5, 2))
    unit = FeatureQueue(7, 3, seed=4)
    torch.testing.assert_close(unit.rows.norm(dim=1), torch.ones(7))
    assert torch.equal(unit.rows, FeatureQueue(7, 3, seed=4).rows)  # the same on every rank


def test_training_enqueues_the_teacher_and_eval_changes_nothing():
    term = _term(0.2, 1e-4, "mlp")
    students, teachers = _inputs()
    before = term.queue.rows.clone()
    term.eval()
    with torch.no_grad():
        term(students[0], teachers[0])
    assert torch.equal(term.queue.rows, before) and int(term.queue.ptr) == 0
    term.train()
    term(students[0], teachers[0])
    torch.testing.assert_close(term.queue.rows[:B], F.normalize(teachers[0], dim=1))
    assert torch.equal(term.queue.rows[B:], before[B:]) and int(term.queue.ptr) == B


def _out(emb: torch.Tensor) -> ModelOutput:
    return ModelOutput([], emb, torch.zeros(emb.shape[0], 3))


def test_gradients_reach_the_student_and_head_never_the_teacher():
    students, teachers = _inputs()
    student = students[0].clone().requires_grad_(True)
    teacher = teachers[0].clone().requires_grad_(True)
    objective = build(distill_config("seed", seed__queue_size=K), student_dim=DS, teacher_dims=[DT],
                      train_labels=torch.arange(20) % 3)
    terms = objective(_out(student), [_out(teacher)], torch.zeros(B, dtype=torch.long), torch.arange(B))
    assert list(terms) == ["seed"]
    terms["seed"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    assert teacher.grad is None


def test_several_teachers_weight_one_queue_and_head_each():
    students, teachers = _inputs()
    t2 = torch.randn(B, 7, generator=torch.Generator().manual_seed(5))
    objective = build(distill_config("seed", seed__queue_size=K), student_dim=DS, teacher_dims=[DT, 7],
                      train_labels=torch.arange(20) % 3, teacher_weights=[3.0, 1.0])
    term = objective.terms["seed"]
    assert [loss.queue.rows.shape for loss in term.losses] == [(K, DT), (K, 7)]
    term.eval()  # no enqueue: every call sees the same queues
    expected = [loss(students[0], t).item() for loss, t in zip(term.losses, (teachers[0], t2))]
    value = term(_batch(students[0], [teachers[0], t2]))
    assert value.item() == pytest.approx(0.75 * expected[0] + 0.25 * expected[1], rel=1e-6)


def _batch(student, teachers):
    from orchestrator.distill.base import Batch

    return Batch(_out(student), [_out(t) for t in teachers], torch.zeros(B, dtype=torch.long), torch.arange(B))


def test_declarations_no_labels_and_knob_errors_name_the_key():
    cfg = distill_config("seed")
    needs = registry.teacher_needs(cfg)
    assert needs.fields == {"embedding"} and not needs.labels
    assert registry.supports_teachers(cfg, 3) is None and registry.cacheable(cfg)
    assert registry.paper_defaults("seed")["distill.seed.queue_size"] == 65536
    for override, key in (("distill.seed.queue_size=0", "distill.seed.queue_size"),
                          ("distill.seed.teacher_t=0", "distill.seed.teacher_t"),
                          ("distill.seed.head=deep", "distill.seed.head"),
                          ("distill.seed.weight=-1", "distill.seed.weight")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])


def test_seed_learns_digits_alongside_ce(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+seed", "distill.seed.queue_size": 256})
    trainer = Learner(cfg, data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert {k for k in metrics if k.startswith("train/loss_")} == {"train/loss_ce", "train/loss_seed"}
    assert math.isfinite(metrics["train/loss_seed"])
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, test  # chance is 0.1
