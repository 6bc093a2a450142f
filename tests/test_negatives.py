"""NegativeSampler: CRD negatives (class / uniform, exact / shared)."""

from __future__ import annotations

import pytest
import torch

from orchestrator.data.negatives import NegativeSampler


def _labels() -> torch.Tensor:
    # unbalanced: class 0 has 10 samples, class 1 has 3, class 2 has 17
    return torch.tensor([0] * 10 + [1] * 3 + [2] * 17)[torch.randperm(30, generator=torch.Generator().manual_seed(1))]


def test_class_mode_never_returns_same_class_and_covers_the_others():
    labels = _labels()
    sampler = NegativeSampler(labels, k=25, mode="class", seed=0)
    idx = torch.arange(30).repeat(20)  # every anchor 20 times
    neg = sampler.sample(idx, labels[idx])
    assert neg.shape == (600, 25) and neg.dtype == torch.long
    assert int(neg.min()) >= 0 and int(neg.max()) < 30
    assert not (labels[neg] == labels[idx][:, None]).any()
    for c in range(3):
        rows = neg[labels[idx] == c]
        assert set(rows.unique().tolist()) == set(torch.nonzero(labels != c).flatten().tolist())


def test_uniform_mode_and_shared():
    labels = _labels()
    sampler = NegativeSampler(labels, k=7, mode="uniform", seed=3)
    neg = sampler.sample(torch.arange(5), labels[:5])
    assert neg.shape == (5, 7) and int(neg.min()) >= 0 and int(neg.max()) < 30
    shared = sampler.sample_shared()
    assert shared.shape == (7,) and shared.unique().numel() == 7  # distinct


def test_reproducible_from_seed_and_streams_differ():
    labels = _labels()
    idx = torch.arange(8)
    a = NegativeSampler(labels, 5, "class", seed=11)
    b = NegativeSampler(labels, 5, "class", seed=11)
    c = NegativeSampler(labels, 5, "class", seed=12)
    draws_a = [a.sample(idx, labels[idx]) for _ in range(3)]
    draws_b = [b.sample(idx, labels[idx]) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(draws_a, draws_b))
    assert not torch.equal(draws_a[0], c.sample(idx, labels[idx]))
    assert not torch.equal(draws_a[1], draws_a[2])
    d = NegativeSampler(labels, 5, "class", seed=11)
    d.stream = 1  # another rank
    assert not torch.equal(draws_a[0], d.sample(idx, labels[idx]))


def test_state_round_trip_resumes_the_stream():
    labels = _labels()
    idx = torch.arange(6)
    a = NegativeSampler(labels, 4, "class", seed=5)
    a.sample(idx, labels[idx])
    a.sample_shared()
    state = a.state_dict()
    expected = [a.sample(idx, labels[idx]), a.sample_shared()]
    b = NegativeSampler(labels, 4, "class", seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.sample(idx, labels[idx]), expected[0])
    assert torch.equal(b.sample_shared(), expected[1])
    with pytest.raises(ValueError, match="k=4"):
        NegativeSampler(labels, 3, "class").load_state_dict(state)


def test_argument_checks():
    labels = _labels()
    with pytest.raises(ValueError, match="nce_k"):
        NegativeSampler(labels, 30, "class")
    with pytest.raises(ValueError, match="nce_k"):
        NegativeSampler(labels, 0, "class")
    with pytest.raises(ValueError, match="mode"):
        NegativeSampler(labels, 3, "hard")
    with pytest.raises(ValueError, match="two classes"):
        NegativeSampler(torch.zeros(10, dtype=torch.long), 3, "class").sample(torch.arange(2), torch.zeros(2))
