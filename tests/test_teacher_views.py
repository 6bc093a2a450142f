"""The teacher view cache (orchestrator/teacher_outputs/views.py): a trial fed it computes the live teacher's losses."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config.schema import apply_overrides
from orchestrator.data import build_data, set_epoch
from orchestrator.distill import registry
from orchestrator.run.learner import Learner
from orchestrator.teacher_outputs import compute_teacher_outputs
from orchestrator.teacher_outputs.views import restore_logits, store_logits
from orchestrator.teacher_outputs import TeacherViews, ViewCacheMismatch, build_views


def augmented(digits, **extra):
    cfg, _, teacher = digits
    cfg = apply_overrides(cfg, {"data.augment": True, "train.epochs": 2, **extra})
    return cfg, build_data(cfg.data, cfg.seed), teacher


def test_view_cached_losses_equal_live_teacher_losses(digits, tmp_path):
    cfg, data, teacher = augmented(digits, **{"distill.method": "crd_kd"})  # reads logits (KD) and embedding (CRD)
    needs = registry.teacher_needs(cfg.distill)
    views = build_views(teacher, data.train, cfg.seed, cfg.train.epochs, needs, tmp_path / "views", batch_size=300)
    assert views.epochs() == 2 and set(views.meta.fields) == set(needs.fields)
    live = Learner(cfg, data, [teacher])
    cached = Learner(cfg, data, teacher_outputs=[views])
    for epoch in range(cfg.train.epochs):
        # the same batches; the cached teacher outputs are the live ones to fp16 rounding
        set_epoch(live.train_loader, epoch)
        live._loader_epoch = cached._loader_epoch = epoch
        for images, _, indices in live.train_loader:
            a, b = live._teacher_forward(images, indices)[0], cached._teacher_forward(images, indices)[0]
            for field in needs.fields:
                x, y = getattr(a, field), getattr(b, field)
                assert torch.allclose(x, y, rtol=1e-3, atol=1e-3 * float(x.abs().max())), field
        m_live, m_cached = live.train_one_epoch(), cached.train_one_epoch()
        for key in [k for k in m_live if k.startswith("train/loss")]:
            assert m_cached[key] == pytest.approx(m_live[key], rel=2e-3, abs=1e-4), key
    assert cached.evaluate()["acc1"] == pytest.approx(live.evaluate()["acc1"], abs=0.02)


def test_view_cache_refuses_another_seed_augmentation_split_or_epochs(digits, tmp_path):
    cfg, data, teacher = augmented(digits, **{"distill.method": "kd"})
    views = build_views(teacher, data.train, cfg.seed, 2, registry.teacher_needs(cfg.distill), tmp_path / "v")
    with pytest.raises(ViewCacheMismatch, match=rf"views of seed {cfg.seed}, but this trial trains with seed 5"):
        Learner(apply_overrides(cfg, {"seed": 5}), data, teacher_outputs=[views])
    plain_cfg = apply_overrides(cfg, {"data.augment": False})
    with pytest.raises(ViewCacheMismatch, match="not augmented"):
        Learner(plain_cfg, build_data(plain_cfg.data, cfg.seed), teacher_outputs=[views])
    with pytest.raises(ViewCacheMismatch, match="holds 2 epoch.s. of views, this trial trains 3"):
        Learner(apply_overrides(cfg, {"train.epochs": 3}), data, teacher_outputs=[views])
    small_cfg = apply_overrides(cfg, {"data.train_subset": 500})
    with pytest.raises(ViewCacheMismatch, match="another train split"):
        Learner(small_cfg, build_data(small_cfg.data, cfg.seed), teacher_outputs=[views])
    with pytest.raises(ViewCacheMismatch, match="also reads embedding"):
        Learner(apply_overrides(cfg, {"distill.method": "crd_kd"}), data, teacher_outputs=[views])
    data.train.augment = type(data.train.augment)(8, 2, flip=False)  # another crop: other views
    with pytest.raises(ViewCacheMismatch, match="augmentation crop8-pad1-noflip-stream1, this trial's augmentation "
                                                "is crop8-pad2"):
        Learner(cfg, data, teacher_outputs=[views])
    # and the un-augmented cache is refused on augmented data
    plain = compute_teacher_outputs(teacher, build_data(plain_cfg.data, cfg.seed).train_eval)
    with pytest.raises(ValueError, match="un-augmented images, but the train split is augmented"):
        Learner(cfg, build_data(cfg.data, cfg.seed), teacher_outputs=[plain])


def test_view_cache_build_resumes_and_is_reopened(digits, tmp_path):
    cfg, data, teacher = augmented(digits, **{"distill.method": "kd"})
    needs = registry.teacher_needs(cfg.distill)
    first = build_views(teacher, data.train, cfg.seed, 1, needs, tmp_path / "v")
    stamp = (tmp_path / "v" / "epoch-00000.pt").stat().st_mtime_ns
    again = build_views(teacher, data.train, cfg.seed, 3, needs, tmp_path / "v")
    assert (tmp_path / "v" / "epoch-00000.pt").stat().st_mtime_ns == stamp and again.epochs() == 3
    assert TeacherViews(tmp_path / "v").meta == first.meta
    size = (tmp_path / "v" / "epoch-00001.pt").stat().st_size
    assert first.meta.bytes_per_epoch() == len(data.train) * 10 * 2 <= size < first.meta.bytes_per_epoch() + 4096
    with pytest.raises(ViewCacheMismatch, match="another view cache"):
        build_views(teacher, data.train, cfg.seed + 1, 1, needs, tmp_path / "v")


def test_topk_logits_keep_the_top_probabilities_and_the_remaining_mass():
    torch.manual_seed(0)
    logits = 3 * torch.randn(64, 100)
    stored = store_logits(logits, 5)
    assert stored["topk_indices"].dtype == torch.int16 and stored["topk_values"].dtype == torch.float16
    restored = restore_logits(stored, torch.arange(64), 100)
    p, q = logits.softmax(1), restored.softmax(1)
    top = logits.topk(5, dim=1).indices
    assert torch.allclose(q.gather(1, top), p.gather(1, top), rtol=1e-2, atol=1e-4)  # fp16 logits
    assert torch.equal(restored.argmax(1), logits.argmax(1))
    assert torch.allclose(q.sum(1), torch.ones(64))
    rest = ~torch.zeros_like(p, dtype=torch.bool).scatter(1, top, True)
    assert torch.allclose(q[rest].reshape(64, 95).sum(1), p[rest].reshape(64, 95).sum(1), atol=5e-3)
    assert torch.equal(restore_logits(store_logits(logits, 0), torch.arange(3), 100), logits[:3].half().float())
