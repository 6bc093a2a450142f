"""Up-front validation: bad input exits 2 before anything starts (also in --dry-run), naming key and what is allowed."""

from __future__ import annotations

import pytest

from orchestrator.run import preflight
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.sweep.search.space import load_space
from orchestrator.sweep.cli import main

TINY = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "sweep.search_space=kd"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("key", ["model.student", "model.teacher"])
def test_unknown_model_name_exits_2_listing_known_models(key, capsys):
    assert main(["--dry-run", *TINY, f"{key}=nope"]) == 2
    err = _err(capsys)
    assert f"'{key}'" in err and "'nope'" in err and "tiny_student" in err and "cnn_teacher" in err


def test_workers_that_never_fit_this_machine_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(preflight.os, "cpu_count", lambda: 2)
    assert main(["--dry-run", *TINY, "train.num_workers=64", "train.in_process=false"]) == 2
    err = _err(capsys)
    assert "train.num_workers" in err and "64 CPUs" in err and "2 CPU core(s)" in err
    assert main(["--dry-run", *TINY, "train.num_workers=2", "train.in_process=false", "ray.num_cpus=2"]) == 2
    assert "3 CPUs" in _err(capsys)  # 2 workers + the trial process, against ray.num_cpus
    assert main(["--dry-run", *TINY, "train.num_workers=2", "train.in_process=false"]) == 0  # 2 workers on 2 cores
    assert not (tmp_path / "runs").exists()


def test_gpu_trial_without_gpus_exits_2(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["--dry-run", *TINY, "train.use_gpu=true"]) == 2
    assert "train.use_gpu" in _err(capsys)


@pytest.mark.slow
def test_workers_that_never_fit_the_cluster_exit_2_in_dry_run(ray_session, capsys):
    """With --address the cluster's resources count (the session Ray has 4 CPUs)."""
    assert main(["--dry-run", "--address", "auto", *TINY, "train.num_workers=8", "train.in_process=false"]) == 2
    assert "9 CPUs" in _err(capsys)
    assert ray_session.is_initialized()


def test_yaml_syntax_errors_name_file_and_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\ntrain:\n  epochs: 3\n lr: 0.1\n")
    assert main(["--dry-run", "--config", str(config)]) == 2
    assert _err(capsys).startswith(f"error: {config}:4: ")
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {type: float, low: 0.1, high: 0.5\n")
    assert main(["--dry-run", *TINY, f"sweep.search_space={space}"]) == 2
    assert _err(capsys).startswith(f"error: {space}:3: ")


@pytest.mark.parametrize(
    "text",
    [
        "fixed:\n  distill.method: kd\nparams:\n"
        "  distill.crd.nce_t: {type: float, low: 0.05, high: 0.2, when: {distill.method: [crd]}}\n",
        "params:\n  distill.method: {type: categorical, choices: [kd, crd_kd]}\n"
        "  distill.crd.nce_t: {type: float, low: 0.05, high: 0.2, when: {distill.method: [crd]}}\n",
    ],
    ids=["fixed", "choices"],
)
def test_conditional_parameter_that_is_never_active_is_rejected(text, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(ConfigError, match=r"nce_t\.when.*distill\.method can take.*never sampled"):
        load_space(str(space), load_config(None, TINY))


def test_conditional_parameter_that_can_be_active_is_accepted(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  distill.method: {type: categorical, choices: [kd, crd]}\n"
        "  distill.crd.nce_t: {type: float, low: 0.05, high: 0.2, when: {distill.method: [crd]}}\n"
    )
    assert [p.key for p in load_space(str(space), load_config(None, TINY)).params][-1] == "distill.crd.nce_t"
