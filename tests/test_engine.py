"""The plain-PyTorch training API: objectives learn, teachers stay frozen, checkpoints resume exactly."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config.schema import apply_overrides
from orchestrator.data import build_data
from orchestrator.run.learner import NonFiniteLossError
from orchestrator.run.learner import Learner
from orchestrator.run.step_timer import PHASES, StepTimer
from orchestrator.teacher_outputs import compute_teacher_outputs


@pytest.mark.parametrize("method", ["ce", "kd", "crd", "crd_kd"])
def test_each_objective_learns_digits(digits, method):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": method}), data, [teacher])
    for _ in range(cfg.train.epochs):
        metrics = trainer.train_one_epoch()
    test = trainer.evaluate("test")
    assert test["acc1"] > 0.6, (method, test)  # chance is 0.1
    expected = {"ce": {"ce"}, "kd": {"ce", "kd"}, "crd": {"ce", "crd"}, "crd_kd": {"ce", "kd", "crd"}}[method]
    assert {k[len("train/loss_"):] for k in metrics if k.startswith("train/loss_")} == expected


def test_teacher_is_frozen_and_never_checkpointed(digits):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": "crd_kd"}), data, [teacher])
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train_one_epoch()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    head_params = [p for p in trainer.objective.parameters() if p.requires_grad]
    assert head_params and all(id(p) in optimised for p in head_params)
    state = trainer.state_dict()
    assert "teacher" not in str(list(state.keys()))
    teacher_tensors = {v.data_ptr() for v in teacher.state_dict().values()}
    assert not teacher_tensors & {v.data_ptr() for v in state["student"].values()}


def test_checkpoint_round_trip_resumes_exactly(digits, tmp_path):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "crd_kd", "train.epochs": 3})
    straight = Learner(cfg, data, [teacher])
    straight.train_one_epoch()
    path = tmp_path / "state.pt"
    torch.save(straight.state_dict(), path)
    straight.train_one_epoch()

    resumed = Learner(cfg, data, [teacher])
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.epoch == 1
    resumed.train_one_epoch()
    for (name, a), b in zip(straight.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(straight.objective.state_dict().items(), resumed.objective.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name



def test_a_step_timer_times_every_phase_and_changes_no_weight(digits):
    """The benchmarks' hook: a timed Learner trains to bit-identical weights and losses, every phase timed."""
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "crd_kd", "train.epochs": 2})
    plain, timed = Learner(cfg, data, [teacher]), Learner(cfg, data, [teacher])
    timed.step_timer = StepTimer(timed.device)
    seconds = 0.0
    for _ in range(2):
        a, b = plain.train_one_epoch(), timed.train_one_epoch()
        assert {k: v for k, v in a.items() if k.startswith("train/")} == {k: v for k, v in b.items() if k.startswith("train/")}
        seconds += b["time/epoch_s"]
    for (name, x), y in zip(plain.student.state_dict().items(), timed.student.state_dict().values()):
        assert torch.equal(x, y), name
    for (name, x), y in zip(plain.objective.state_dict().items(), timed.objective.state_dict().values()):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), name
    timer = timed.step_timer
    assert timer.steps == 2 * len(timed.train_loader)
    assert list(timer.totals) == list(PHASES) and all(v > 0 for v in timer.totals.values())
    assert sum(timer.totals.values()) <= seconds  # the phases tile each epoch's pass

def test_cached_teacher_outputs_match_live_teacher(digits):
    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "kd", "train.epochs": 1})
    cache = compute_teacher_outputs(teacher, data.train_eval)
    live = Learner(cfg, data, [teacher])
    cached = Learner(cfg, data, teacher_outputs=[cache])
    cached.student.load_state_dict(live.student.state_dict())
    a, b = live.train_one_epoch(), cached.train_one_epoch()
    assert a["train/loss_kd"] == pytest.approx(b["train/loss_kd"], rel=1e-4)


def test_nan_loss_is_one_clear_error(digits):
    cfg, data, teacher = digits
    trainer = Learner(apply_overrides(cfg, {"distill.method": "kd", "train.lr": 1e6}), data, [teacher])
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        for _ in range(3):
            trainer.train_one_epoch()


def test_method_that_needs_a_teacher_refuses_to_run_without(digits):
    cfg, data, _ = digits
    with pytest.raises(ValueError, match="needs at least one teacher"):
        Learner(apply_overrides(cfg, {"distill.method": "kd"}), data)


def test_teacher_outputs_of_another_split_are_refused(digits):
    cfg, data, teacher = digits
    cache = compute_teacher_outputs(teacher, data.train_eval)
    other = build_data(cfg.data, seed=cfg.seed + 1)  # same size, other images in the train split
    with pytest.raises(ValueError, match="different train split"):
        Learner(apply_overrides(cfg, {"distill.method": "kd"}), other, teacher_outputs=[cache])


def test_a_trainer_leaves_the_process_rng_as_it_found_it_and_checkpoints_its_own(digits, tmp_path):
    """A Learner draws from its own stream (seeded by seed + rank) and restores the process's RNG state after
    building and after each epoch; its checkpoint holds that stream (and the CUDA generator's on a GPU)."""
    import random

    import numpy as np

    cfg, data, teacher = digits
    cfg = apply_overrides(cfg, {"distill.method": "kd", "train.epochs": 2})
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    trainer = Learner(cfg, data, [teacher])
    trainer.train_one_epoch()
    state = trainer.state_dict()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    # The same seed gives the same student whatever the process drew in between (its own stream).
    again = Learner(cfg, data, [teacher])
    torch.rand(100)
    again.train_one_epoch()
    for a, b in zip(trainer.student.state_dict().values(), again.student.state_dict().values()):
        assert torch.equal(a, b)
    assert "cuda" not in state["rng"]
    if torch.cuda.is_available():  # the CUDA generator is checkpointed and restored too
        gpu = Learner(cfg, data, [teacher], device="cuda")
        before = torch.cuda.get_rng_state()
        gpu.train_one_epoch()
        assert torch.equal(torch.cuda.get_rng_state(), before)
        saved = gpu.state_dict()["rng"]["cuda"]
        resumed = Learner(cfg, data, [teacher], device="cuda")
        resumed.load_state_dict(gpu.state_dict())
        assert torch.equal(resumed.state_dict()["rng"]["cuda"], saved)
