"""A second augmented view of the student's batch for the terms that ask (``Needs.student_views``, SupCon).

The second view comes from the deterministic view stream (view 1 of ``(seed, epoch, index)``): it differs
from the loader's view 0 and is the same in every trial with the seed. The Learner runs the student on it
only when an enabled term asks and the data are augmented; everything else takes the path it always took.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distill_helpers import build, distill_config
from orchestrator.config.schema import Config, apply_overrides
from orchestrator.data import build_data
from orchestrator.data import views
from orchestrator.distill import registry
from orchestrator.distill.base import Batch, split_views
from orchestrator.distill.objective import labelled_rows
from orchestrator.run.learner import Learner
from orchestrator.models.base import ModelOutput

DIGITS = {"data.dataset": "digits", "model.student": "tiny_student", "data.batch_size": 64, "train.epochs": 1,
          "distill.supcon.feat_dim": 8}


def _config(method: str, augment: bool, **extra) -> Config:
    return apply_overrides(Config(), {**DIGITS, "distill.method": method, "data.augment": augment, **extra})


@pytest.fixture(scope="module")
def augmented():
    cfg = _config("ce+supcon", True)
    return cfg, build_data(cfg.data, cfg.seed)


def test_view_one_differs_from_view_zero_and_is_reproducible(augmented):
    _, data = augmented
    idx = torch.arange(200)
    first = data.train.view_images(3, 2, idx)
    second = data.train.view_images(3, 2, idx, view=1)
    assert torch.equal(second, data.train.view_images(3, 2, idx, view=1))  # a function of the key alone
    assert torch.equal(second[50:60], data.train.view_images(3, 2, idx[50:60], view=1))  # not of the batch
    same = (first == second).flatten(1).all(1).float().mean().item()
    assert same < 0.3  # digits' 3 x 3 crop offsets: two views coincide with probability 1/9
    for other in ((4, 2), (3, 3)):  # another seed or epoch: other second views
        assert not torch.equal(second, data.train.view_images(*other, idx, view=1))
    assert views.view_param(0, 2) == 2 and views.view_param(1, 0) == views.PARAMS_PER_VIEW


def test_view_zero_is_what_the_loader_gives(augmented):
    cfg, data = augmented
    trainer = Learner(cfg, data)
    images, _, positions = next(iter(trainer.train_loader))
    assert torch.equal(images, data.train.view_images(cfg.seed, 0, positions))


def test_registry_knows_who_reads_views():
    assert registry.view_readers(distill_config("ce+supcon")) == ["supcon"]
    assert registry.view_readers(distill_config("crd_kd")) == registry.view_readers(distill_config("ce+dml")) == []
    assert registry.teacher_needs(distill_config("ce+supcon")).student_views == 2
    assert (registry.Needs(student_views=2) | registry.Needs()).student_views == 2
    with pytest.raises(ValueError, match="student_views"):
        registry.Needs(student_views=0)
    assert "2 student views" in registry.describe("ce+supcon")


def _spy_student(trainer: Learner) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    trainer.student.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().clone()))
    return inputs


@pytest.mark.parametrize("method, augment, views_", [
    ("ce+supcon", True, 2), ("ce+supcon", False, 1), ("ce", True, 1), ("ce+dml", True, 1), ("ce+dogo", True, 2)])
def test_the_student_runs_on_a_second_view_only_when_a_term_asks_and_data_augment(method, augment, views_):
    cfg = _config(method, augment, **{"data.train_subset": 128})
    data = build_data(cfg.data, cfg.seed)
    trainer = Learner(cfg, data)
    assert trainer.extra_views == views_ - 1
    inputs = _spy_student(trainer)
    seen: dict[str, list[int]] = {}
    for name, term in trainer.objective.terms.items():
        term.register_forward_pre_hook(lambda module, args, name=name: seen.setdefault(name, []).append(
            (len(args[0].student_views), len(args[0].view_images))))
    positions = [p for _, _, p in trainer.train_loader]  # epoch 0's order (the Learner's pass draws the same)
    trainer.train_one_epoch()
    assert [x.shape[0] for x in inputs] == [views_ * p.numel() for p in positions]
    if views_ == 2:
        for x, p in zip(inputs, positions):
            assert torch.equal(x[p.numel():], data.train.view_images(cfg.seed, 0, p, view=1))
    assert seen.pop("ce") == [(0, 0)] * len(positions)  # only the terms that ask see views
    for name, counts in seen.items():
        assert counts == [(views_ - 1, views_ - 1)] * len(positions), name


def test_split_views_and_labelled_rows_keep_rows_aligned():
    out = ModelOutput([torch.arange(12.0).reshape(6, 2)], torch.arange(6.0)[:, None], torch.arange(6.0)[:, None] * 10)
    first, second = split_views(out, 2)
    assert first.embedding.flatten().tolist() == [0, 1, 2] and second.logits.flatten().tolist() == [30, 40, 50]
    assert second.features[0].tolist() == [[6, 7], [8, 9], [10, 11]]
    batch = Batch(first, [], torch.tensor([0, -1, 2]), torch.arange(3), None, (second,), (torch.arange(3.0) + 7,))
    kept = labelled_rows(batch)
    assert kept.student.embedding.flatten().tolist() == [0, 2]
    assert kept.student_views[0].embedding.flatten().tolist() == [3, 5] and kept.view_images[0].tolist() == [7, 9]


def test_the_objective_hands_views_to_the_terms_that_ask_only():
    cfg = distill_config("ce+supcon", supcon__feat_dim=4)
    objective = build(cfg, student_dim=5, teacher_dims=[], train_labels=torch.arange(20) % 4)
    got = {}
    for name, term in objective.terms.items():
        term.register_forward_pre_hook(lambda module, args, name=name: got.__setitem__(
            name, (args[0].student_views, args[0].view_images)))
    a, b = (ModelOutput([], torch.randn(8, 5), torch.randn(8, 4)) for _ in range(2))
    image = torch.zeros(8, 1, 2, 2)
    objective(a, [], torch.arange(8) % 4, torch.arange(8), student_views=(b,), view_images=(image,))
    assert got["ce"] == ((), ()) and got["supcon"] == ((b,), (image,))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, method: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _config(method, True, **{"data.train_subset": 128})
        trainer = Learner(cfg, build_data(cfg.data, cfg.seed), rank=rank, world_size=world)
        metrics = trainer.train_one_epoch()
        torch.save({"loss": metrics[f"train/loss_{method.split('+')[1]}"], "extra": trainer.extra_views,
                    "student": {k: p.detach() for k, p in trainer.student.named_parameters()},
                    "head": {k: p.detach() for k, p in trainer.objective.named_parameters()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~30-70 s each on a busy 2-core machine
@pytest.mark.parametrize("method", ["ce+supcon", "ce+dogo"])
def test_two_gloo_workers_train_on_two_views_in_step(tmp_path, method):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), method), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["extra"] == r1["extra"] == 1
    assert math.isfinite(r0["loss"]) and r0["loss"] != r1["loss"]  # per-rank batches
    for part in ("student", "head"):
        for key, value in r0[part].items():
            assert torch.equal(value, r1[part][key]), (part, key)  # DDP kept the weights in step
