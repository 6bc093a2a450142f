"""sweep.objectives and sweep.budget: parsed, resolved, and refused by name (exit 2) when malformed."""

from __future__ import annotations

import pytest

from orchestrator.config.budget import Budget
from orchestrator.config.schema import ConfigError, load_config
from orchestrator.config.objectives import budget_of, is_multi_objective, resolve


@pytest.mark.parametrize("override", ["sweep.objectives=[val/acc1:max,cost/macs:min]",
                                      "sweep.objectives=[val/acc1: max, macs: min]"])
def test_objectives_command_line_forms(override):
    cfg = load_config(None, [override])
    assert resolve(cfg) == {"val/acc1": "max", "cost/macs": "min"}
    assert list(resolve(cfg)) == ["val/acc1", "cost/macs"]
    assert is_multi_objective(cfg)


def test_objectives_yaml_mapping_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sweep:\n  objectives: [val/acc1: max, cost/latency_ms: min, params: min]\n")
    cfg = load_config(path)
    assert cfg.sweep.objectives == ["val/acc1:max", "cost/latency_ms:min", "params:min"]
    assert resolve(cfg) == {"val/acc1": "max", "cost/latency_ms": "min", "cost/params": "min"}


@pytest.mark.parametrize("override", [None, "sweep.objectives=[]", "sweep.objectives=[val/acc1:max]"])
def test_no_objectives_is_the_single_metric(override):
    cfg = load_config(None, [override] if override else [])
    assert resolve(cfg) == {"val/acc1": "max"} and not is_multi_objective(cfg)


@pytest.mark.parametrize("value", ["[cost/macs:min,val/acc1:max]",  # accuracy not first
                                   "[val/acc1:max,cost/macs:max]",  # a cost maximised
                                   "[val/acc1:max,cost/macs:min,macs:min]",  # twice
                                   "[val/acc1:max,val/acc5:max]",  # a second accuracy
                                   "[val/acc1:min,cost/macs:min]",  # not sweep.mode
                                   "[val/acc1,macs]"])  # no mode
def test_bad_objectives_name_the_key(value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"sweep.objectives={value}"])
    assert err.value.key == "sweep.objectives"
    assert "first val/acc1:max" in err.value.allowed and "cost/latency_ms" in err.value.allowed


def test_budget_parsed():
    assert budget_of(load_config(None, [])) is None
    assert budget_of(load_config(None, ["sweep.budget=macs <= 2e6"])) == Budget("cost/macs", 2e6)
    assert budget_of(load_config(None, ["sweep.budget=cost/latency_ms<=0.02"])) == Budget("cost/latency_ms", 0.02)


@pytest.mark.parametrize("value, says", [("macs < 2e6", "'<metric> <= <number>'"),
                                         ("flops <= 3", "'<metric> <= <number>'"),
                                         ("macs <= 0", "'<metric> <= <number>'")])
def test_bad_budget_names_the_key(value, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"sweep.budget={value}"])
    assert err.value.key == "sweep.budget" and says in err.value.allowed


def test_budget_with_several_objectives_refused():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sweep.objectives=[val/acc1:max,macs:min]", "sweep.budget=macs <= 2e6"])
    assert err.value.key == "sweep.budget" and "several entries" in err.value.allowed


def test_bad_objectives_exit_2_through_the_cli(capsys):
    from orchestrator.sweep.cli import main

    assert main(["sweep.objectives=[val/acc1:max,cost/flops:min]", "--dry-run"]) == 2
    assert "sweep.objectives" in capsys.readouterr().err


def test_a_space_declares_its_default_objectives_which_a_given_key_or_a_budget_replaces():
    """compress.yaml declares the accuracy-vs-latency front; sweep.objectives or sweep.budget given by the user win."""
    from orchestrator.sweep.cli import build_parser, resolve_config

    def objectives(*argv: str):
        return resolve_config(build_parser().parse_intermixed_args(list(argv))).sweep.objectives

    assert objectives("sweep.search_space=compress") == ["val/acc1:max", "cost/latency_ms:min"]
    assert objectives("sweep.search_space=compress", "sweep.objectives=[val/acc1:max,macs:min]") == [
        "val/acc1:max", "macs:min"]
    assert objectives("sweep.search_space=compress", "sweep.budget=macs <= 2e6") is None
    assert objectives("sweep.search_space=kd") is None  # a space without objectives: the single sweep.metric
