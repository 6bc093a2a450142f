"""Configuration: YAML + dotted overrides, typed, validated with messages that name the key."""

from __future__ import annotations

import pytest

from orchestrator.config.schema import (
    Config,
    ConfigError,
    apply_overrides,
    dump_yaml,
    flatten,
    load_config,
    to_dict,
    tpe_startup_trials,
)


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(load_config()))
    assert to_dict(load_config(path)) == to_dict(Config())


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=7", "distill.kd.temperature=2", "data.train_subset=null", "data.augment=true"])
    assert cfg.train.epochs == 7 and isinstance(cfg.distill.kd.temperature, float)
    assert cfg.data.train_subset is None and cfg.data.augment is True


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: mine\ntrain:\n  epochs: 3\n  lr: 0.1\n")
    cfg = load_config(path, ["train.lr=0.2"])
    assert (cfg.name, cfg.train.epochs, cfg.train.lr) == ("mine", 3, 0.2)


@pytest.mark.parametrize(
    "override, key",
    [
        ("distill.method=fitnet2", "distill.method"),
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=three", "train.epochs"),
        ("distill.crd.momentum=1.5", "distill.crd.momentum"),
        ("distill.dkd.beta=-1", "distill.dkd.beta"),
        ("distill.dkd.temperature=0", "distill.dkd.temperature"),
        ("distill.dkd.warmup=-1", "distill.dkd.warmup"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("train.lrr=0.1", "train.lrr"),
        ("data.dataset=mnist", "data.dataset"),
        ("sweep.asha.grace_period=9", "sweep.asha.grace_period"),
        ("sweep.tpe_startup_trials=0", "sweep.tpe_startup_trials"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert info.value.key == key
    assert key in str(info.value) and "allowed" in str(info.value)


def test_apply_overrides_validates_and_copies():
    base = load_config()
    new = apply_overrides(base, {"distill.kd.temperature": 2.5})
    assert new.distill.kd.temperature == 2.5 and base.distill.kd.temperature == 4.0
    with pytest.raises(ConfigError, match="distill.kd.weight"):
        apply_overrides(base, {"distill.kd.weight": -1})


@pytest.mark.parametrize("num_samples, given, expected", [(8, None, 4), (40, None, 10), (3, None, 2), (8, 6, 6)])
def test_tpe_models_after_a_random_start_shorter_than_the_sweep(num_samples, given, expected):
    cfg = load_config(None, [f"sweep.num_samples={num_samples}", f"sweep.tpe_startup_trials={given or 'null'}"])
    assert tpe_startup_trials(cfg.sweep) == expected


def test_flatten_gives_dotted_keys():
    flat = flatten(to_dict(load_config()))
    assert flat["distill.crd.nce_k"] == 4096 and "sweep.asha.grace_period" in flat


def test_parsing_follows_the_current_distill_section(monkeypatch):
    """Field types are cached per class and per current DistillConfig (which Config's annotation names): a section
    rebuilt by a plug-in is parsed, and the original again once it is restored (as the plug-in tests restore it)."""
    import dataclasses

    from orchestrator.config import schema

    original = schema.DistillConfig
    load_config(None, [])  # Config's fields evaluated with the original section
    extended = dataclasses.make_dataclass("DistillConfig", [("extra", int, dataclasses.field(default=1))], bases=(original,))
    monkeypatch.setattr(schema, "DistillConfig", extended)
    assert load_config(None, ["distill.extra=3"]).distill.extra == 3
    monkeypatch.undo()
    with pytest.raises(ConfigError) as info:
        load_config(None, ["distill.extra=3"])
    assert info.value.key == "distill.extra"
