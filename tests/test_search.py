"""Search spaces: YAML -> validated Optuna define-by-run space with conditional parameters."""

from __future__ import annotations

import pickle

import optuna
import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.search import available_spaces, load_space


def _space_file(tmp_path, body: str):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return str(path)


def test_shipped_spaces_are_valid_for_fashion_mnist():
    """Every shipped space loads (each point it can reach builds a valid config), and every registered term
    has a space of its own (what ``benchmarks/methods.py --tune`` sweeps)."""
    from orchestrator.distill import registry

    assert {"kd", "crd", "crd_kd", "dkd"} <= set(available_spaces())
    cfg = load_config()
    for name in available_spaces():
        space = load_space(name, cfg, num_train_samples=54_000)
        assert space.params, name
    assert set(registry.term_names()) - {"ce"} <= set(available_spaces())


def test_crd_parameters_exist_only_when_crd_is_on():
    cfg = load_config()
    space = load_space("crd_kd", cfg, num_train_samples=54_000)
    fn = pickle.loads(pickle.dumps(space.define_by_run(cfg)))  # Tune pickles the searcher
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        fn(trial)
        method = trial.params["distill.method"]
        seen.add(method)
        has_crd = "distill.beta" in trial.params  # the default space keeps tau and K fixed
        assert has_crd == (method == "crd_kd"), trial.params
        study.tell(trial, 0.5)
    assert seen == {"kd", "crd_kd"}


def test_fixed_values_are_returned_as_constants(tmp_path):
    path = _space_file(tmp_path, "fixed: {distill.method: kd}\nparams:\n  train.lr: {type: float, low: 0.01, high: 0.1, log: true}\n")
    cfg = load_config()
    space = load_space(path, cfg)
    trial = optuna.create_study().ask()
    assert space.define_by_run(cfg)(trial) == {"distill.method": "kd"}
    assert 0.01 <= trial.params["train.lr"] <= 0.1


@pytest.mark.parametrize(
    "body, key",
    [
        ("params:\n  train.lr: {type: float, low: 0.5, high: 0.1}\n", "train.lr.low"),
        ("params:\n  train.lrate: {type: float, low: 0.01, high: 0.1}\n", "train.lrate"),
        ("params:\n  train.lr: {type: float, low: 0.0, high: 0.1, log: true}\n", "train.lr.low"),
        ("params:\n  train.lr: {type: gaussian, low: 0.1, high: 0.2}\n", "train.lr.type"),
        ("params:\n  distill.alpha: {type: float, low: -1.0, high: 1.0}\n", "distill.alpha"),
        ("params:\n  distill.method: {type: categorical, choices: [kd, fitnet9]}\n", "distill.method"),
    ],
)
def test_invalid_spaces_are_rejected_naming_the_parameter(tmp_path, body, key):
    with pytest.raises(ConfigError) as info:
        load_space(_space_file(tmp_path, body), load_config())
    assert key in str(info.value)


def test_more_negatives_than_training_samples_is_rejected():
    with pytest.raises(ConfigError, match="nce_k.*fewer negatives than training samples"):
        load_space("crd", load_config(), num_train_samples=1_000)
