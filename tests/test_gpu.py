"""On a CUDA GPU (skipped without one): objectives and engine give the CPU's results.

TF32 is switched off in these tests: with it, fp32 products round to 10-bit mantissas and
could not be compared with the CPU's.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from orchestrator.config.schema import apply_overrides
from orchestrator.data.negatives import NegativeSampler
from distill_helpers import build, distill_config
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import compute_teacher_outputs
from orchestrator.models.base import ModelOutput

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


N_DATA = 600


def _distiller(kind: str):
    labels = torch.arange(N_DATA) % 10
    if kind == "kd":
        return build(distill_config("kd", kd__weight=0.9, kd__temperature=4.0), student_dim=32, teacher_dims=[48],
                     train_labels=labels)
    mode = kind.split("_")[-1]
    cfg = distill_config("crd_kd", kd__weight=0.5, crd__feat_dim=16, crd__nce_k=100, crd__negatives_mode=mode)
    return build(cfg, student_dim=32, teacher_dims=[48], train_labels=labels, seed=0)


def _outputs(g: torch.Generator, batch: int = 24):
    idx = torch.randperm(N_DATA, generator=g)[:batch]
    s = ModelOutput([], torch.randn(batch, 32, generator=g), torch.randn(batch, 10, generator=g))
    t = ModelOutput([], torch.randn(batch, 48, generator=g), torch.randn(batch, 10, generator=g))
    return s, t, idx % 10, idx


def _on(out: ModelOutput, device: str, grad: bool) -> ModelOutput:
    emb, logits = (x.detach().to(device).requires_grad_(grad) for x in (out.embedding, out.logits))
    return ModelOutput([], emb, logits)


def _draw_on_host(distiller) -> None:
    """Make a GPU distiller draw its negatives on the host, as the CPU one does (same stream)."""
    crd = distiller.terms["crd"]
    draw = type(crd).draw_negatives
    crd.draw_negatives = lambda indices, labels: draw(crd, indices.cpu(), labels)


@pytest.mark.parametrize("kind", ["kd", "crd_kd_exact", "crd_kd_shared"])
def test_objective_steps_on_gpu_match_cpu(kind):
    """Three optimiser steps with the same negatives: loss terms, student gradients, heads, banks, Z agree."""
    cpu = _distiller(kind)
    gpu = copy.deepcopy(cpu).to("cuda")
    if kind != "kd":
        _draw_on_host(gpu)
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (cpu, gpu) if any(True for _ in m.parameters())]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        s, t, labels, idx = _outputs(g)
        s_cpu, s_gpu = _on(s, "cpu", True), _on(s, "cuda", True)
        terms_cpu = cpu(s_cpu, t, labels, idx)
        terms_gpu = gpu(s_gpu, _on(t, "cuda", False), labels.cuda(), idx.cuda())
        assert terms_cpu.keys() == terms_gpu.keys()
        for key in terms_cpu:
            torch.testing.assert_close(terms_gpu[key].cpu(), terms_cpu[key], rtol=1e-5, atol=1e-6)
        for opt in opts:
            opt.zero_grad()
        sum(terms_cpu.values()).backward()
        sum(terms_gpu.values()).backward()
        for a, b in ((s_cpu.embedding, s_gpu.embedding), (s_cpu.logits, s_gpu.logits)):
            if a.grad is not None:
                torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-7)
        for opt in opts:
            opt.step()
    for (name, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert b.device.type == "cuda", name
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-6, msg=name)


def test_negatives_drawn_on_the_gpu_are_valid_and_reproducible():
    labels = torch.arange(N_DATA) % 7  # unequal classes: 86 or 85 samples
    a, b = NegativeSampler(labels, 500, "class", seed=3), NegativeSampler(labels, 500, "class", seed=3)
    idx = torch.randperm(N_DATA)[:64]
    neg = a.sample(idx, labels[idx], "cuda")
    assert neg.device.type == "cuda" and neg.shape == (64, 500) and neg.dtype == torch.long
    assert int(neg.min()) >= 0 and int(neg.max()) < N_DATA
    assert not (labels.cuda()[neg] == labels.cuda()[idx.cuda()][:, None]).any()  # other classes only
    # uniform over the other classes' samples: each of the 6 other classes gets ~1/6 of the draws
    for c in range(7):
        rows = labels[idx] != c
        share = (labels.cuda()[neg[rows.cuda()]] == c).float().mean().item()
        assert share == pytest.approx(1 / 6, abs=0.01)
    shared = a.sample_shared("cuda")
    assert shared.device.type == "cuda" and shared.unique().numel() == 500
    # same seed and counter: same draws; a state round trip resumes the device stream
    assert torch.equal(b.sample(idx, labels[idx], "cuda"), neg)
    assert torch.equal(b.sample_shared("cuda"), shared)
    c = NegativeSampler(labels, 500, "class", seed=3)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.sample(idx, labels[idx], "cuda"), a.sample(idx, labels[idx], "cuda"))
    # the host stream is the CPU's, untouched by device draws
    host = NegativeSampler(labels, 500, "class", seed=3).sample(idx, labels[idx])
    assert host.device.type == "cpu" and not torch.equal(host, neg.cpu())


def _close_students(a: Learner, b: Learner) -> None:
    for (name, x), y in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        torch.testing.assert_close(y.cpu(), x.cpu(), rtol=1e-3, atol=1e-4, msg=name)


def test_kd_epoch_on_gpu_matches_cpu_and_its_state_resumes_on_a_cpu(digits):
    """Same seed, same batches: one KD epoch on the GPU lands where the CPU's does; its checkpoint resumes on a CPU."""
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "kd"})
    cpu = Learner(cfg, data, [teacher])
    gpu = Learner(cfg, data, [copy.deepcopy(teacher)], device="cuda")
    m_cpu, m_gpu = cpu.train_one_epoch(), gpu.train_one_epoch()
    for key in ("train/loss", "train/loss_ce", "train/loss_kd"):
        assert m_gpu[key] == pytest.approx(m_cpu[key], rel=1e-3), key
    _close_students(cpu, gpu)

    buf = io.BytesIO()
    torch.save(gpu.state_dict(), buf)
    buf.seek(0)
    resumed = Learner(cfg, data, [teacher])
    resumed.load_state_dict(torch.load(buf, map_location="cpu", weights_only=True))
    assert resumed.epoch == 1 and all(p.device.type == "cpu" for p in resumed.student.parameters())
    m_resumed, m_gpu = resumed.train_one_epoch(), gpu.train_one_epoch()
    assert m_resumed["train/loss"] == pytest.approx(m_gpu["train/loss"], rel=1e-3)
    _close_students(gpu, resumed)


def test_crd_kd_learns_on_gpu_and_resumes_on_gpu(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "crd_kd", "distill.crd.negatives_mode": "exact"})
    teacher = copy.deepcopy(teacher)  # a Learner moves its teachers to its device
    straight = Learner(cfg, data, [teacher], device="cuda")
    straight.train_one_epoch()
    buf = io.BytesIO()
    torch.save(straight.state_dict(), buf)
    buf.seek(0)
    second = straight.train_one_epoch()
    resumed = Learner(cfg, data, [teacher], device="cuda")
    resumed.load_state_dict(torch.load(buf, map_location="cuda", weights_only=True))
    assert resumed.train_one_epoch()["train/loss_crd"] == pytest.approx(second["train/loss_crd"], rel=1e-4)
    for _ in range(cfg.train.epochs - 2):
        straight.train_one_epoch()
    assert straight.evaluate("test")["acc1"] > 0.6  # chance is 0.1; the CPU test asks the same


def test_cached_teacher_outputs_from_gpu_feed_a_gpu_trainer(digits):
    """Outputs computed on the GPU equal the CPU's; a GPU epoch from them equals one with the live teacher."""
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "kd"})
    gpu_teacher = copy.deepcopy(teacher).to("cuda").eval()
    cache = compute_teacher_outputs(gpu_teacher, data.train, 256, "cuda")
    reference = compute_teacher_outputs(copy.deepcopy(teacher).eval(), data.train, 256, "cpu")
    assert cache.logits.device.type == "cpu"  # caches live in host memory, rows move per batch
    torch.testing.assert_close(cache.logits, reference.logits, rtol=1e-4, atol=1e-4)
    cached = Learner(cfg, data, device="cuda", teacher_outputs=[cache]).train_one_epoch()
    live = Learner(cfg, data, [gpu_teacher], device="cuda").train_one_epoch()
    for key in ("train/loss", "train/loss_kd"):
        assert cached[key] == pytest.approx(live[key], rel=1e-4), key
