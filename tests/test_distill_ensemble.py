"""Multi-teacher objectives: ensemble KD closed form, per-teacher CRD heads and banks."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.config import DistillConfig
from orchestrator.distill import (
    EnsembleCRDDistiller,
    EnsembleCRDKDDistiller,
    EnsembleKDDistiller,
    build_distiller,
    ensemble_kd_loss,
)
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
    d = EnsembleKDDistiller(2, gamma=1.0, alpha=2.0, temperature=TEMP)
    t_outs = [ModelOutput([], torch.zeros(2, 4), t) for t in (t1, t2)]
    terms = d(ModelOutput([], torch.zeros(2, 4), s), t_outs, torch.tensor([0, 1]), torch.arange(2))
    assert terms["kd"].item() == pytest.approx(2.0 * _ensemble_kd_by_hand([0.5, 0.5]), rel=1e-6)
    with pytest.raises(ValueError, match="2 teacher outputs"):
        d(ModelOutput([], torch.zeros(2, 4), s), t_outs[:1], torch.tensor([0, 1]), torch.arange(2))


def _batch(g, dims=(8, 12)):
    idx = torch.randperm(40, generator=g)[:6]
    s = ModelOutput([], torch.randn(6, 5, generator=g, requires_grad=True), torch.randn(6, 4, generator=g))
    ts = [ModelOutput([], torch.randn(6, d, generator=g), torch.randn(6, 4, generator=g)) for d in dims]
    return s, ts, idx % 4, idx


@pytest.mark.parametrize("mode", ["exact", "shared"])
def test_every_teacher_head_gets_gradients_and_every_bank_updates(mode):
    labels = torch.arange(40) % 4
    d = EnsembleCRDKDDistiller(5, [8, 12], labels, feat_dim=4, nce_k=6, negatives_mode=mode, seed=0)
    before = [(c.memory.bank_s.clone(), c.memory.bank_t.clone()) for c in d.crds]
    s, ts, y, idx = _batch(torch.Generator().manual_seed(0))
    terms = d(s, ts, y, idx)
    assert set(terms) == {"ce", "kd", "crd"}
    sum(terms.values()).backward()
    assert s.embedding.grad is not None
    for m, crd in enumerate(d.crds):
        for name, p in crd.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (m, name)
        for bank, old in zip((crd.memory.bank_s, crd.memory.bank_t), before[m]):
            changed = (bank != old).any(dim=1)
            assert torch.equal(torch.nonzero(changed).flatten(), idx.sort().values)
        assert crd.memory.z_s.item() > 0 and crd.memory.z_t.item() > 0
    assert not torch.equal(d.crds[0].memory.bank_s, d.crds[1].memory.bank_s)  # one bank pair per teacher


def test_crd_term_is_weighted_sum_of_per_teacher_terms():
    labels = torch.arange(40) % 4
    d = EnsembleCRDDistiller(5, [8, 12], labels, teacher_weights=[1.0, 3.0], beta=2.0, feat_dim=4, nce_k=6, seed=0)
    d.eval()  # no state change, so the per-teacher terms can be recomputed
    s, ts, y, idx = _batch(torch.Generator().manual_seed(1))
    state = d.sampler.state_dict()
    terms = d(s, ts, y, idx)
    assert set(terms) == {"ce", "crd"}
    d.sampler.load_state_dict(state)
    neg = d.draw_negatives(idx, y)
    parts = [crd(s.embedding, t.embedding, idx, neg) for crd, t in zip(d.crds, ts)]
    torch.testing.assert_close(terms["crd"], 2.0 * (0.25 * parts[0] + 0.75 * parts[1]))


def test_build_distiller_dispatches_to_ensembles():
    labels = torch.arange(40) % 4
    kw = dict(num_classes=4, student_dim=5, teacher_dims=[8, 12, 6], train_labels=labels, negatives="uniform", seed=0)
    expected = {"kd": EnsembleKDDistiller, "crd": EnsembleCRDDistiller, "crd_kd": EnsembleCRDKDDistiller}
    for method, cls in expected.items():
        cfg = DistillConfig(method=method)
        cfg.crd.nce_k = 6
        d = build_distiller(cfg, teacher_weights=[1, 1, 2], **kw)
        assert type(d) is cls
        assert d.teacher_weights == pytest.approx((0.25, 0.25, 0.5))
    assert [c.embed_t.linear.in_features for c in d.crds] == [8, 12, 6]
    with pytest.raises(ValueError, match="teacher_weights"):
        build_distiller(DistillConfig(method="kd"), teacher_weights=[1.0], **kw)
    with pytest.raises(ValueError, match="teacher_weights"):
        EnsembleKDDistiller(2, teacher_weights=[0.0, 0.0])
