"""Search spaces: YAML -> validated Optuna define-by-run space with conditional parameters."""

from __future__ import annotations

import pickle

import optuna
import pytest

from orchestrator.config.schema import ConfigError, load_config
from orchestrator.sweep.search.space import available_spaces, load_space


def _space_file(tmp_path, body: str):
    path = tmp_path / "space.yaml"
    path.write_text(body)
    return str(path)


def test_shipped_spaces_are_valid_for_fashion_mnist():
    """Every shipped space loads (each point it can reach builds a valid config), and every registered term with
    reference code has a space of its own (what ``benchmarks/methods.py --tune`` sweeps)."""
    from orchestrator.distill import registry

    assert {"kd", "crd", "crd_kd", "dkd"} <= set(available_spaces())
    cfg = load_config()
    for name in available_spaces():
        space = load_space(name, cfg, num_train_samples=54_000)
        assert space.params, name
    checked = {name for name in registry.term_names() if not registry.term(name).no_reference}
    assert checked - {"ce"} <= set(available_spaces())


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
        has_crd = "distill.crd.weight" in trial.params  # the default space keeps tau and K fixed
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
        ("params:\n  distill.kd.weight: {type: float, low: -1.0, high: 1.0}\n", "distill.kd.weight"),
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


def _held(overrides: list[str], config_file=None):
    """The config the sweep CLI resolves for ``overrides`` (given keys the space samples are held)."""
    from orchestrator.sweep.cli import build_parser, resolve_config

    args = build_parser().parse_intermixed_args([*(["--config", str(config_file)] if config_file else []), *overrides])
    return resolve_config(args)


def test_a_given_value_the_space_samples_is_held_and_taken_out_of_the_space(tmp_path):
    cfg = _held(["sweep.search_space=kd", "distill.kd.temperature=4"])
    assert cfg.sweep.held_keys == ["distill.kd.temperature"]
    space = load_space("kd", cfg, num_train_samples=54_000)
    assert "distill.kd.temperature" not in [p.key for p in space.params]
    assert space.fixed["distill.kd.temperature"] == 4.0 and "distill.kd.temperature=4.0" in space.held_line()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):  # never sampled: every trial gets the given value
        trial = study.ask()
        assert space.define_by_run(cfg)(trial)["distill.kd.temperature"] == 4.0
        assert "distill.kd.temperature" not in trial.params
        study.tell(trial, 0.5)
    # The paper defaults respect it too (they set only what is still sampled).
    from orchestrator.sweep.search.space import paper_points

    (point,) = paper_points(space, cfg)
    assert "distill.kd.temperature" not in point.params
    # Given in --config: held the same way.
    config_file = tmp_path / "c.yaml"
    config_file.write_text("sweep: {search_space: kd}\ndistill: {kd: {temperature: 3.0}}\n")
    assert _held([], config_file).sweep.held_keys == ["distill.kd.temperature"]
    # A key the space does not touch is not held; nothing is held when nothing is given.
    assert _held(["sweep.search_space=kd", "train.epochs=3"]).sweep.held_keys == []


def test_a_given_method_outside_the_spaces_choices_is_the_method_with_its_knobs_as_when_says():
    cfg = _held(["distill.method=ce+pkt"])  # the default space chooses between kd and crd_kd
    space = load_space(cfg.sweep.search_space, cfg, num_train_samples=54_000)
    assert space.fixed["distill.method"] == "ce+pkt" and "distill.method" not in [p.key for p in space.params]
    assert "distill.crd.weight" in space.not_sampled and "distill.crd.weight" not in [p.key for p in space.params]
    assert "distill.kd.weight" in [p.key for p in space.params]  # unconditional: kept
    from orchestrator.sweep.search.space import paper_points, possible_configs

    assert {c.distill.method for c in possible_configs(space, cfg)} == {"ce+pkt"}
    assert [p.method for p in paper_points(space, cfg)] == ["ce+pkt"]


def test_a_held_value_the_space_cannot_take_is_refused_naming_the_key():
    cfg = _held(["data.dataset=digits", "sweep.search_space=crd_kd", "distill.method=crd",
                 "distill.crd.nce_k=4096"])  # more negatives than digits' 1,294 training images
    with pytest.raises(ConfigError, match="nce_k"):
        load_space(cfg.sweep.search_space, cfg, num_train_samples=1294)
    with pytest.raises(ConfigError, match="sweep.held_keys"):
        load_config(None, ["sweep.held_keys=[no.such.key]"])
