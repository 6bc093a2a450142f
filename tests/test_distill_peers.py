"""Online mutual distillation (DML, DoGo): pinned to the DoGo authors' KL, DML's closed form, gradients,
peers evaluated and chosen by the Learner, a digits run.

DoGo reference: NeurAI-Lab/DoGo at commit e303820 (``criterion/kl.py``, ``KLLoss``), evaluated in float64
on the inputs of :func:`_embeddings` with both views equal (``KLLoss()(s, s, p, p, temperature=T)``):
it returns (loss_s, loss_t), the student's and the peer's KL. With two augmented views (``data.augment``) the
reference is ``KLLoss()(s_x, s_y, p_x, p_y, temperature=T)`` on the inputs of :func:`_two_views`.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_helpers import distill_config
from orchestrator.config.schema import apply_overrides
from orchestrator.data import build_data
from orchestrator.distill import registry
from orchestrator.distill.base import Batch
from orchestrator.distill.peers import MutualLearning, PeerKnobs, class_log_probs, similarity_log_probs
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

DOGO_REFERENCE = {0.1: (0.1879021941495069, 0.060972953100426226), 0.5: (0.06385664638947514, 0.05313445659474821)}


DOGO_TWO_VIEWS = {0.1: (1.0833638335337574, 0.8816308485464008), 0.5: (0.09948570649025791, 0.10414196260738952)}


def _two_views():
    """(s_x, p_x, s_y, p_y): student and peer embeddings of 6 images, views x (those of _embeddings) and y."""
    g = torch.Generator().manual_seed(8)
    return (*_embeddings(), torch.randn(6, 5, generator=g, dtype=torch.float64),
            torch.randn(6, 5, generator=g, dtype=torch.float64))


def _embeddings():
    g = torch.Generator().manual_seed(7)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)


class Fixed(nn.Module):
    """A 'network' whose outputs are its parameters (whatever the images): controlled peer outputs."""

    def __init__(self, embedding: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.embedding, self.logits = nn.Parameter(embedding.clone()), nn.Parameter(logits.clone())

    def forward(self, images):
        return ModelOutput([], self.embedding, self.logits)


class Lookup(nn.Module):
    """A 'network' whose embedding of image k (images (N, 1) holding k) is row k of its parameter."""

    def __init__(self, table: torch.Tensor, classes: int):
        super().__init__()
        self.table, self.classes = nn.Parameter(table.clone()), classes

    def forward(self, images):
        k = images.flatten().long()
        return ModelOutput([], self.table[k], torch.zeros(len(k), self.classes, dtype=self.table.dtype))


def _term(kind: str, peer: nn.Module, temperature: float, peers: int = 2) -> MutualLearning:
    log_probs, reduction = (class_log_probs, "batchmean") if kind == "dml" else (similarity_log_probs, "mean")
    return MutualLearning(lambda: peer, peers, temperature, log_probs, reduction)


@pytest.mark.parametrize("temperature", sorted(DOGO_REFERENCE))
def test_dogo_equals_the_authors_kl(temperature):
    s_emb, p_emb = _embeddings()
    logits = torch.zeros(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    term = _term("dogo", Fixed(p_emb, logits), temperature)
    value = term(Batch(ModelOutput([], s_emb, logits), [], labels, torch.arange(6), torch.zeros(6, 1)))
    ce_peer = F.cross_entropy(logits, labels)
    loss_s, loss_t = DOGO_REFERENCE[temperature]
    assert (value - ce_peer).item() == pytest.approx(loss_s + loss_t, rel=1e-6)  # fp32 inside the term


@pytest.mark.parametrize("temperature", sorted(DOGO_TWO_VIEWS))
def test_dogo_with_two_views_equals_the_authors_kl_view_x_against_view_y(temperature):
    s_x, p_x, s_y, p_y = _two_views()
    peer = Lookup(torch.cat([p_x, p_y]), classes=3)  # image k < 6: view x of image k; 6 + k: its view y
    term = _term("dogo", peer, temperature)
    logits = torch.zeros(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    batch = Batch(ModelOutput([], s_x, logits), [], labels, torch.arange(6), torch.arange(6.0)[:, None],
                  (ModelOutput([], s_y, logits),), (torch.arange(6.0, 12.0)[:, None],))
    loss_s, loss_t = DOGO_TWO_VIEWS[temperature]
    assert (term(batch) - F.cross_entropy(logits, labels)).item() == pytest.approx(loss_s + loss_t, rel=1e-6)
    term(batch).backward()
    assert peer.table.grad[6:].abs().sum() > 0  # the peer's view y is trained too
    assert registry.view_readers(distill_config("ce+dogo")) == ["dogo"]
    assert registry.view_readers(distill_config("ce+dml")) == []  # DML's paper: one view


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _softmax(row, t=1.0):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def test_dml_equals_its_closed_form():
    s_logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
    p_logits = [[2.0, 0.0, 1.0], [1.0, 1.0, -1.0]]
    labels = [1, 2]
    term = _term("dml", Fixed(torch.zeros(2, 4), torch.tensor(p_logits)), temperature=2.0)
    batch = Batch(ModelOutput([], torch.zeros(2, 4), torch.tensor(s_logits)), [], torch.tensor(labels),
                  torch.arange(2), torch.zeros(2, 1))
    ps = [_softmax(r, 2.0) for r in s_logits]
    pp = [_softmax(r, 2.0) for r in p_logits]
    kl_s = sum(_kl(b, a) for a, b in zip(ps, pp)) / 2  # KL(peer || student), batch mean
    kl_p = sum(_kl(a, b) for a, b in zip(ps, pp)) / 2
    ce_p = -sum(math.log(_softmax(r)[y]) for r, y in zip(p_logits, labels)) / 2
    assert term(batch).item() == pytest.approx(kl_s + kl_p + ce_p, rel=1e-6)


def test_gradients_reach_the_student_and_every_peer_and_the_student_kl_not_the_peer():
    torch.manual_seed(0)
    peers = [Fixed(torch.randn(4, 3), torch.randn(4, 5)) for _ in range(2)]
    made = iter(peers)
    term = MutualLearning(lambda: next(made), 3, 1.0, class_log_probs, "batchmean")
    s_logits = torch.randn(4, 5, requires_grad=True)
    batch = Batch(ModelOutput([], torch.randn(4, 3), s_logits), [], torch.tensor([0, 1, 2, 3]), torch.arange(4),
                  torch.zeros(4, 1))
    term(batch).backward()
    assert s_logits.grad is not None and s_logits.grad.abs().sum() > 0
    assert all(p.logits.grad is not None and p.logits.grad.abs().sum() > 0 for p in peers)
    assert set(term.networks()) == {"peer1", "peer2"}


def test_knobs_are_checked():
    with pytest.raises(ValueError, match="peers"):
        PeerKnobs(peers=1)
    with pytest.raises(ValueError, match="temperature"):
        PeerKnobs(temperature=0.0)


@pytest.mark.parametrize("method", ["ce+dml", "ce+dogo"])
def test_peers_train_on_digits_every_peer_is_evaluated_and_the_best_chosen(digits, method):
    cfg, data, _ = digits
    cfg = apply_overrides(cfg, {"distill.method": method, "train.epochs": 3})
    trainer = Learner(cfg, data)
    assert not trainer.objective.needs_teacher
    for _ in range(cfg.train.epochs):
        trainer.train_one_epoch()
    val = trainer.evaluate("val")
    assert {"student/acc1", "peer1/acc1", "chosen"} <= set(val)
    best = max(val["student/acc1"], val["peer1/acc1"])
    assert val["acc1"] == best > 0.5  # ten classes: chance is 0.1
    assert trainer.chosen is trainer.networks()[["student", "peer1"][val["chosen"]]]
    restored = Learner(cfg, data)
    restored.load_state_dict(trainer.state_dict())
    assert restored.chosen_name == trainer.chosen_name
    for a, b in zip(trainer.chosen.state_dict().values(), restored.chosen.state_dict().values()):
        assert torch.equal(a, b)


def test_dogo_with_augmentation_contrasts_two_views_and_learns_digits(digits):
    cfg, _, _ = digits
    cfg = apply_overrides(cfg, {"distill.method": "ce+dogo", "train.epochs": 3, "data.augment": True})
    trainer = Learner(cfg, build_data(cfg.data, cfg.seed))
    assert trainer.extra_views == 1  # the student's and the peer's second view
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    assert math.isfinite(metrics["train/loss_dogo"])
    assert trainer.evaluate("val")["acc1"] > 0.3  # chance is 0.1; CE alone: 0.33 after 3 augmented epochs


@pytest.mark.slow  # a Ray Train worker group of 2 gloo workers: ~1-2 min on 2 cores
def test_a_peers_trial_runs_on_two_ddp_workers_and_logs_both_peers(ray_session, isolated_cache, tmp_path, sqlite_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.cli import main

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "peers.yaml"
    space.write_text("fixed: {distill.method: ce+dml}\nparams:\n  train.lr: {type: float, low: 0.05, high: 0.1}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([
        "--name", "peers", "--num-samples", "1", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
        "data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64",
        "train.epochs=2", f"sweep.search_space={space}", "sweep.confirm.top_k=0", "sweep.baseline=false",
        "train.num_workers=2", "train.in_process=false", "export.formats=[]",
    ]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("peers")
    (trial,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("orchestrator.kind") == "trial"]
    assert trial.info.status == "FINISHED" and trial.data.params["train.num_workers"] == "2"
    for key in ("val/student/acc1", "val/peer1/acc1", "train/loss_dml", "val/acc1"):
        assert len(client.get_metric_history(trial.info.run_id, key)) == 2, key
