"""Multi-teacher terms: ensemble KD closed form, per-teacher CRD heads and banks, refusals."""

from __future__ import annotations

import math

import pytest
import torch

from distill_helpers import build, distill_config
from orchestrator.distill.crd import CRD
from orchestrator.distill.kd import KD, ensemble_kd_loss
from orchestrator.models.base import ModelOutput

S = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
T1 = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
T2 = [[0.0, 2.0, 1.0], [1.0, 1.0, -1.0]]
TEMP = 3.0


def _softmax(row, temp):
    e = [math.exp(x / temp) for x in row]
    return [x / sum(e) for x in e]


def _ensemble_kd_by_hand(weights) -> float:
    total = 0.0
    for s, t1, t2 in zip(S, T1, T2):
        p_s = _softmax(s, TEMP)
        q = [weights[0] * a + weights[1] * b for a, b in zip(_softmax(t1, TEMP), _softmax(t2, TEMP))]
        total += sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p_s))
    return TEMP**2 * total / len(S)


def test_ensemble_kd_equals_closed_form():
    s, t1, t2 = torch.tensor(S), torch.tensor(T1), torch.tensor(T2)
    assert ensemble_kd_loss(s, [t1, t2], TEMP).item() == pytest.approx(_ensemble_kd_by_hand([0.5, 0.5]), rel=1e-6)
    weighted = ensemble_kd_loss(s, [t1, t2], TEMP, weights=[3.0, 1.0])  # normalised to 0.75 / 0.25
    assert weighted.item() == pytest.approx(_ensemble_kd_by_hand([0.75, 0.25]), rel=1e-6)
    d = build(distill_config("kd", kd__weight=2.0, kd__temperature=TEMP), student_dim=4, teacher_dims=[4, 4],
              train_labels=torch.tensor([0, 1, 2]))
    t_outs = [ModelOutput([], torch.zeros(2, 4), t) for t in (t1, t2)]
    terms = d(ModelOutput([], torch.zeros(2, 4), s), t_outs, torch.tensor([0, 1]), torch.arange(2))
    assert terms["kd"].item() == pytest.approx(2.0 * _ensemble_kd_by_hand([0.5, 0.5]), rel=1e-6)
    with pytest.raises(ValueError, match="2 teacher"):
        d(ModelOutput([], torch.zeros(2, 4), s), t_outs[:1], torch.tensor([0, 1]), torch.arange(2))


def _batch(g, dims=(8, 12)):
    idx = torch.randperm(40, generator=g)[:6]
    s = ModelOutput([], torch.randn(6, 5, generator=g, requires_grad=True), torch.randn(6, 4, generator=g))
    ts = [ModelOutput([], torch.randn(6, d, generator=g), torch.randn(6, 4, generator=g)) for d in dims]
    return s, ts, idx % 4, idx


@pytest.mark.parametrize("mode", ["exact", "shared"])
def test_every_teacher_head_gets_gradients_and_every_bank_updates(mode):
    labels = torch.arange(40) % 4
    cfg = distill_config("crd_kd", crd__feat_dim=4, crd__nce_k=6, crd__negatives_mode=mode)
    d = build(cfg, student_dim=5, teacher_dims=[8, 12], train_labels=labels, seed=0)
    crds = d.terms["crd"].crds
    before = [(c.memory.bank_s.clone(), c.memory.bank_t.clone()) for c in crds]
    s, ts, y, idx = _batch(torch.Generator().manual_seed(0))
    terms = d(s, ts, y, idx)
    assert set(terms) == {"ce", "kd", "crd"}
    sum(terms.values()).backward()
    assert s.embedding.grad is not None
    for m, crd in enumerate(crds):
        for name, p in crd.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (m, name)
        for bank, old in zip((crd.memory.bank_s, crd.memory.bank_t), before[m]):
            changed = (bank != old).any(dim=1)
            assert torch.equal(torch.nonzero(changed).flatten(), idx.sort().values)
        assert crd.memory.z_s.item() > 0 and crd.memory.z_t.item() > 0
    assert not torch.equal(crds[0].memory.bank_s, crds[1].memory.bank_s)  # one bank pair per teacher


def test_crd_term_is_weighted_sum_of_per_teacher_terms():
    labels = torch.arange(40) % 4
    cfg = distill_config("crd", crd__weight=2.0, crd__feat_dim=4, crd__nce_k=6, crd__negatives_mode="exact")
    d = build(cfg, student_dim=5, teacher_dims=[8, 12], train_labels=labels, teacher_weights=[1.0, 3.0], seed=0)
    d.eval()  # no state change, so the per-teacher terms can be recomputed
    s, ts, y, idx = _batch(torch.Generator().manual_seed(1))
    crd_term = d.terms["crd"]
    state = crd_term.sampler.state_dict()
    terms = d(s, ts, y, idx)
    assert set(terms) == {"ce", "crd"}
    crd_term.sampler.load_state_dict(state)
    neg = crd_term.draw_negatives(idx, y)
    parts = [crd(s.embedding, t.embedding, idx, neg) for crd, t in zip(crd_term.crds, ts)]
    torch.testing.assert_close(terms["crd"], 2.0 * (0.25 * parts[0] + 0.75 * parts[1]))


def test_objectives_apply_their_terms_to_every_teacher():
    labels = torch.arange(40) % 4
    kw = dict(num_classes=4, student_dim=5, teacher_dims=[8, 12, 6], train_labels=labels, seed=0)
    for method in ("kd", "crd", "crd_kd"):
        d = build(distill_config(method, crd__nce_k=6, crd__negatives="uniform"), teacher_weights=[1, 1, 2], **kw)
        for name in set(d.terms) - {"ce"}:
            assert d.terms[name].teacher_weights == pytest.approx((0.25, 0.25, 0.5))
    assert [c.embed_t.linear.in_features for c in d.terms["crd"].crds] == [8, 12, 6]
    with pytest.raises(ValueError, match="teacher_weights"):
        build(distill_config("kd"), teacher_weights=[1.0], **kw)
    with pytest.raises(ValueError, match="teacher_weights"):
        KD(teacher_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="dkd.*one teacher only"):
        build(distill_config("dkd"), **kw)
    assert isinstance(d.terms["crd"], CRD)
