"""CRD: NCE value by hand, memory update, gradients, exact/shared, Z modes, checkpoints."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from distill_helpers import build, distill_config
from orchestrator.distill.crd import CRD, CRDLoss
from orchestrator.distill.nce import contrast_scores
from orchestrator.models.base import ModelOutput


def _identity_heads(crd: CRDLoss) -> None:
    with torch.no_grad():
        for head in (crd.embed_s, crd.embed_t):
            head.linear.weight.copy_(torch.eye(head.linear.weight.shape[0]))
            head.linear.bias.zero_()


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _normalise(v) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


# hand-built example: N = 6, K = 2, d = 2, tau = 0.5, momentum = 0.25
N, K, TAU, MOM = 6, 2, 0.5, 0.25
BANK_S = [_unit(i * math.pi / 3) for i in range(N)]
BANK_T = [_unit(0.3 + i) for i in range(N)]
STUDENT = [[1.0, 0.0], [0.0, 2.0]]  # -> unit [1, 0], [0, 1]
TEACHER = [[3.0, 4.0], [-1.0, 0.0]]  # -> unit [0.6, 0.8], [-1, 0]
INDICES = [0, 3]
NEGATIVES = [[1, 2], [4, 5]]


def _hand_nce(anchors, bank) -> float:
    scores = [
        [math.exp(_dot(a, bank[j]) / TAU) for j in [i] + negs] for a, i, negs in zip(anchors, INDICES, NEGATIVES)
    ]
    z = sum(sum(row) for row in scores) / sum(len(row) for row in scores) * N  # first-batch Z
    pn = K / N
    total = 0.0
    for row in scores:
        p = [x / z for x in row]
        total += math.log(p[0] / (p[0] + pn)) + sum(math.log(pn / (q + pn)) for q in p[1:])
    return -total / len(scores)


def _hand_crd() -> CRDLoss:
    crd = CRDLoss(2, 2, N, feat_dim=2, nce_t=TAU, momentum=MOM)
    _identity_heads(crd)
    crd.memory.bank_s.copy_(torch.tensor(BANK_S))
    crd.memory.bank_t.copy_(torch.tensor(BANK_T))
    return crd


def test_nce_loss_on_hand_built_example():
    crd = _hand_crd()
    loss = crd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(INDICES), torch.tensor(NEGATIVES))
    v_s = [_normalise(v) for v in STUDENT]
    v_t = [_normalise(v) for v in TEACHER]
    expected = _hand_nce(v_s, BANK_T) + _hand_nce(v_t, BANK_S)  # student vs teacher bank + vice versa
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_memory_update_is_momentum_then_renormalise():
    crd = _hand_crd()
    crd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(INDICES), torch.tensor(NEGATIVES))
    v_s = [_normalise(v) for v in STUDENT]
    v_t = [_normalise(v) for v in TEACHER]
    exp_s, exp_t = [list(r) for r in BANK_S], [list(r) for r in BANK_T]
    for row, i in enumerate(INDICES):
        exp_s[i] = _normalise([MOM * m + (1 - MOM) * v for m, v in zip(BANK_S[i], v_s[row])])
        exp_t[i] = _normalise([MOM * m + (1 - MOM) * v for m, v in zip(BANK_T[i], v_t[row])])
    torch.testing.assert_close(crd.memory.bank_s, torch.tensor(exp_s))
    torch.testing.assert_close(crd.memory.bank_t, torch.tensor(exp_t))


def test_duplicate_indices_update_from_first_occurrence():
    crd = _hand_crd()
    old = crd.memory.bank_s[2].clone()
    crd(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor(TEACHER), torch.tensor([2, 2]), torch.tensor([0, 1]))
    expected = torch.nn.functional.normalize(MOM * old + (1 - MOM) * torch.tensor([1.0, 0.0]), dim=0)
    torch.testing.assert_close(crd.memory.bank_s[2], expected)


def test_eval_mode_changes_no_state():
    crd = _hand_crd().eval()
    before = {k: v.clone() for k, v in crd.state_dict().items()}
    loss = crd(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(INDICES), torch.tensor(NEGATIVES))
    assert torch.isfinite(loss)
    for key, value in crd.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Tiny(nn.Module):
    def __init__(self, in_dim: int, emb_dim: int, num_classes: int):
        super().__init__()
        self.body = nn.Linear(in_dim, emb_dim)
        self.fc = nn.Linear(emb_dim, num_classes)

    def forward(self, x):
        emb = torch.relu(self.body(x))
        return ModelOutput([emb], emb, self.fc(emb))


@pytest.mark.parametrize("teacher_no_grad", [True, False])
def test_gradients_reach_student_and_heads_never_teacher(teacher_no_grad):
    torch.manual_seed(0)
    labels = torch.arange(30) % 3
    cfg = distill_config("crd_kd", crd__nce_k=8, crd__feat_dim=4)
    d = build(cfg, num_classes=3, student_dim=5, teacher_dims=[7], train_labels=labels, seed=0)
    student, teacher = _Tiny(6, 5, 3), _Tiny(6, 7, 3)
    x, idx = torch.randn(4, 6), torch.tensor([0, 4, 8, 29])
    if teacher_no_grad:
        teacher.eval().requires_grad_(False)
        with torch.no_grad():
            t_out = teacher(x)
    else:  # even a teacher that tracks gradients must not receive any
        t_out = teacher(x)
    t_out = ModelOutput([], t_out.embedding, t_out.logits)  # as from the output cache
    terms = d(student(x), t_out, labels[idx], idx)
    assert set(terms) == {"ce", "kd", "crd"}
    sum(terms.values()).backward()
    for name, p in list(student.named_parameters()) + list(d.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())


def _pair_of_losses():
    a = CRDLoss(5, 7, 20, feat_dim=4, nce_t=0.1, momentum=0.5, seed=3)
    b = CRDLoss(5, 7, 20, feat_dim=4, nce_t=0.1, momentum=0.5, seed=3)
    b.load_state_dict(a.state_dict())
    return a, b


def test_exact_with_shared_rows_equals_shared_mode():
    torch.manual_seed(1)
    exact, shared = _pair_of_losses()
    for _ in range(3):
        s, t = torch.randn(4, 5), torch.randn(4, 7)
        idx, neg = torch.randperm(20)[:4], torch.randperm(20)[:6]
        s_e, s_s = s.clone().requires_grad_(), s.clone().requires_grad_()
        loss_e = exact(s_e, t, idx, neg.expand(4, 6))
        loss_s = shared(s_s, t, idx, neg)
        torch.testing.assert_close(loss_e, loss_s)
        loss_e.backward()
        loss_s.backward()
        torch.testing.assert_close(s_e.grad, s_s.grad)
    for key, value in exact.state_dict().items():
        torch.testing.assert_close(value, shared.state_dict()[key])


def _z_estimates(crd: CRDLoss, s, t, idx, neg):
    with torch.no_grad():
        out_s = contrast_scores(crd.embed_s(s), crd.memory.bank_t, idx, neg, crd.tau)
        out_t = contrast_scores(crd.embed_t(t), crd.memory.bank_s, idx, neg, crd.tau)
    return out_s.mean() * crd.n_data, out_t.mean() * crd.n_data


def test_z_fixed_and_ema():
    torch.manual_seed(2)
    fixed = CRDLoss(5, 7, 20, feat_dim=4, nce_t=0.1, z_mode="fixed", seed=1)
    ema = CRDLoss(5, 7, 20, feat_dim=4, nce_t=0.1, z_mode="ema", z_momentum=0.9, seed=1)
    ema.load_state_dict(fixed.state_dict())
    assert fixed.memory.z_s.item() == -1.0  # unset until the first training batch
    batches = [(torch.randn(4, 5), torch.randn(4, 7), torch.randperm(20)[:4], torch.randint(0, 20, (4, 3))) for _ in range(3)]
    est = _z_estimates(fixed, *batches[0])
    fixed(*batches[0])
    ema(*batches[0])
    for crd in (fixed, ema):
        torch.testing.assert_close(crd.memory.z_s, est[0])
        torch.testing.assert_close(crd.memory.z_t, est[1])
    z_first = (fixed.memory.z_s.clone(), fixed.memory.z_t.clone())
    for batch in batches[1:]:
        prev = (ema.memory.z_s.clone(), ema.memory.z_t.clone())
        est = _z_estimates(ema, *batch)
        fixed(*batch)
        ema(*batch)
        assert torch.equal(fixed.memory.z_s, z_first[0]) and torch.equal(fixed.memory.z_t, z_first[1])
        torch.testing.assert_close(ema.memory.z_s, 0.9 * prev[0] + 0.1 * est[0])
        torch.testing.assert_close(ema.memory.z_t, 0.9 * prev[1] + 0.1 * est[1])


def _make(seed: int, mode: str):
    labels = torch.arange(40) % 4
    cfg = distill_config("crd_kd", crd__feat_dim=4, crd__nce_k=5, crd__negatives_mode=mode)
    return build(cfg, student_dim=6, teacher_dims=[8], train_labels=labels, seed=seed)


def _batch(g: torch.Generator):
    idx = torch.randperm(40, generator=g)[:5]
    s = ModelOutput([], torch.randn(5, 6, generator=g), torch.randn(5, 4, generator=g))
    t = ModelOutput([], torch.randn(5, 8, generator=g), torch.randn(5, 4, generator=g))
    return s, t, idx % 4, idx


@pytest.mark.parametrize("mode", ["exact", "shared"])
def test_state_dict_round_trip(mode):
    g = torch.Generator().manual_seed(0)
    a = _make(0, mode)
    for _ in range(2):
        a(*_batch(g))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    crd = "terms.crd.crds.0"
    assert {f"{crd}.memory.bank_s", f"{crd}.memory.bank_t", f"{crd}.memory.z_s", f"{crd}.memory.z_t",
            "terms.crd._extra_state"} <= set(state)
    assert f"{crd}.embed_s.linear.weight" in state and f"{crd}.embed_t.linear.weight" in state
    b = _make(123, mode)
    b.load_state_dict(state)
    for key, value in a.state_dict().items():
        if not key.endswith("_extra_state"):
            assert torch.equal(value, b.state_dict()[key]), key
    batch = _batch(g)
    terms_a, terms_b = a(*batch), b(*batch)  # same negatives drawn after the restore
    for key in terms_a:
        assert torch.equal(terms_a[key], terms_b[key]), key
    assert torch.equal(a.terms["crd"].crds[0].memory.bank_s, b.terms["crd"].crds[0].memory.bank_s)


def test_argument_checks():
    with pytest.raises(ValueError, match="nce_t"):
        CRDLoss(4, 4, 10, nce_t=0.0)
    with pytest.raises(ValueError, match="momentum"):
        CRDLoss(4, 4, 10, momentum=1.0)
    with pytest.raises(ValueError, match="feat_dim"):
        CRDLoss(4, 4, 10, feat_dim=0)
    with pytest.raises(ValueError, match="z_mode"):
        CRDLoss(4, 4, 10, z_mode="running")
    labels = torch.arange(10) % 2
    with pytest.raises(ValueError, match="nce_k"):
        CRD(4, [4], labels, nce_k=0)
    with pytest.raises(ValueError, match="nce_k"):
        CRD(4, [4], labels, nce_k=10)
    with pytest.raises(ValueError, match="negatives_mode"):
        CRD(4, [4], labels, nce_k=3, negatives_mode="all")


def test_bank_initialisation_range():
    crd = CRDLoss(4, 4, 50, feat_dim=12, seed=0)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (crd.memory.bank_s, crd.memory.bank_t):
        assert bank.shape == (50, 12)
        assert bank.abs().max() <= stdv and bank.abs().max() > 0.9 * stdv
    assert not torch.equal(crd.memory.bank_s, crd.memory.bank_t)
