"""The old weight keys ``distill.gamma/alpha/beta`` still work for one release, read as ``distill.ce/kd/crd.weight``
wherever a user gives a key (YAML, overrides, search spaces, held keys), with one deprecation line each; both names
with different values are refused naming both; and an old key trains exactly as its new one."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import renamed_keys
from orchestrator.config.renamed_keys import deprecation
from orchestrator.config.schema import Config, ConfigError, apply_overrides, from_dict, given_keys, load_config, to_dict
from orchestrator.distill import registry
from orchestrator.sweep.search.space import load_space, space_keys

OLD_WEIGHTS = {"distill.gamma": 0.3, "distill.alpha": 0.5, "distill.beta": 0.2}
NEW_WEIGHTS = {"distill.ce.weight": 0.3, "distill.kd.weight": 0.5, "distill.crd.weight": 0.2}


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    """Each test starts as a fresh process would: no notice printed yet."""
    monkeypatch.setattr(renamed_keys, "_told", set())


def notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]


def test_the_notice_is_one_line_naming_the_new_key():
    assert deprecation("distill.alpha") == (
        "distill.alpha is deprecated: use distill.kd.weight (the old key works until the next release)")


def test_old_keys_in_a_yaml_config_are_read_as_the_new_ones(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("distill:\n  method: crd_kd\n  gamma: 0.3\n  alpha: 0.5\n  beta: 0.2\n  kd:\n    temperature: 2.0\n")
    cfg = load_config(path)
    assert registry.weights(cfg.distill) == {"ce": 0.3, "kd": 0.5, "crd": 0.2}
    assert cfg.distill.kd.temperature == 2.0  # the rest of the section is kept
    assert notices(capsys) == [deprecation(k) for k in OLD_WEIGHTS]
    assert set(NEW_WEIGHTS) <= set(given_keys(path, None)) and not set(OLD_WEIGHTS) & set(given_keys(path, None))
    load_config(path)
    assert notices(capsys) == []  # once per key and process


def test_old_keys_in_overrides_defaults_and_held_keys(capsys):
    cfg = load_config(None, ["distill.alpha=0.5"])
    assert cfg.distill.kd.weight == 0.5 and notices(capsys) == [deprecation("distill.alpha")]
    assert apply_overrides(Config(), {"distill.beta": 0.1}).distill.crd.weight == 0.1
    assert load_config(None, [], defaults={"distill.gamma": 0.4}).distill.ce.weight == 0.4
    held = load_config(None, ["sweep.held_keys=[distill.gamma, distill.ce.weight]"]).sweep.held_keys
    assert held == ["distill.ce.weight"]
    assert notices(capsys) == [deprecation("distill.beta"), deprecation("distill.gamma")]
    with pytest.raises(ConfigError, match="distill.kd.weight"):  # the old key is checked as the new one
        load_config(None, ["distill.alpha=-1"])
    saved = to_dict(Config())  # a config tree an older release saved (e.g. a sweep's trial contexts)
    del saved["distill"]["kd"]["weight"]
    saved["distill"]["alpha"] = 0.3
    assert from_dict(saved).distill.kd.weight == 0.3 and saved["distill"]["alpha"] == 0.3  # the tree is left as it was


def test_both_names_with_different_values_are_refused_naming_both(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["distill.alpha=0.5", "distill.kd.weight=0.7"])
    assert "distill.alpha and distill.kd.weight" in str(err.value) and "[0.5, 0.7]" in str(err.value)
    assert load_config(None, ["distill.alpha=0.5", "distill.kd.weight=0.50"]).distill.kd.weight == 0.5
    path = tmp_path / "both.yaml"
    path.write_text("distill:\n  gamma: 0.3\n  ce:\n    weight: 0.4\n")
    with pytest.raises(ConfigError, match=r"both.yaml: distill.gamma and distill.ce.weight"):
        load_config(path)
    with pytest.raises(ConfigError, match="distill.beta and distill.crd.weight"):
        apply_overrides(Config(), {"distill.beta": 0.1, "distill.crd.weight": 0.2})


@pytest.mark.parametrize("entry", ["orchestrator.sweep.cli", "pipelines.ensemble", "pipelines.teachers"])
def test_every_cli_takes_an_old_key_and_exits_2_on_a_clash(entry, capsys):
    main = __import__(entry, fromlist=["main"]).main
    assert main(["--print-config", "distill.alpha=0.25"]) == 0
    out, err = capsys.readouterr()
    assert "weight: 0.25" in out and deprecation("distill.alpha") in err.splitlines()
    assert main(["--print-config", "distill.alpha=0.25", "distill.kd.weight=0.5"]) == 2
    err = capsys.readouterr().err
    assert "distill.alpha and distill.kd.weight" in err and err.startswith("error:")


SPACE = """\
fixed:
  distill.method: kd
  distill.gamma: 0.5
params:
  distill.alpha: {type: float, low: 0.5, high: 2.0}
  distill.kd.temperature: {type: float, low: 1.0, high: 8.0, when: {distill.method: [kd]}}
  train.lr: {type: float, low: 0.01, high: 0.2, log: true, when: {distill.alpha: [1.0]}}
"""


def test_old_keys_in_a_search_space_are_read_as_the_new_ones(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text(SPACE)
    space = load_space(str(path), Config())
    assert space.fixed == {"distill.method": "kd", "distill.ce.weight": 0.5}
    assert [p.key for p in space.params] == ["distill.kd.weight", "distill.kd.temperature", "train.lr"]
    assert space.params[2].when == {"distill.kd.weight": [1.0]}
    assert notices(capsys) == [deprecation("distill.gamma"), deprecation("distill.alpha")]
    assert space_keys(str(path)) == {"distill.method", "distill.ce.weight", "distill.kd.weight",
                                     "distill.kd.temperature", "train.lr"}
    # a value given under the new name holds the parameter the space samples under the old one
    held = load_space(str(path), load_config(None, ["sweep.held_keys=[distill.kd.weight]", "distill.kd.weight=0.7"]))
    assert held.fixed["distill.kd.weight"] == 0.7 and "distill.kd.weight" not in [p.key for p in held.params]


def test_a_search_space_with_both_names_is_refused_naming_both(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text(SPACE + "  distill.kd.weight: {type: float, low: 0.1, high: 1.0}\n")
    with pytest.raises(ConfigError, match="both.yaml:distill.alpha and distill.kd.weight"):
        load_space(str(path), Config())


def test_an_old_key_trains_exactly_as_the_new_one(digits):
    """One digits epoch of crd_kd with the old weight keys and with the new ones: the same student, bit for bit;
    another KD weight gives another student (the comparison can fail)."""
    from orchestrator.run.learner import Learner

    cfg, data, teacher = digits

    def train(weights: dict) -> tuple[dict, dict]:
        run = apply_overrides(cfg, {"distill.method": "crd_kd", "train.epochs": 1, **weights})
        learner = Learner(run, data, [teacher])
        losses = {k: v for k, v in learner.train_one_epoch().items() if k.startswith("train/loss")}  # not timings
        return learner.student.state_dict(), losses

    (old, old_losses), (new, new_losses) = train(OLD_WEIGHTS), train(NEW_WEIGHTS)
    assert old_losses == new_losses and {"train/loss_ce", "train/loss_kd", "train/loss_crd"} <= set(new_losses)
    assert all(torch.equal(old[k], new[k]) for k in new)
    other, _ = train({**NEW_WEIGHTS, "distill.kd.weight": 0.6})
    assert not all(torch.equal(other[k], new[k]) for k in new)
