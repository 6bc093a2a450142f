"""Objective terms from outside the package: docs/ARCHITECTURE.md's "Add an objective" module, written into a
temporary package and named in ``distill.plugins``, registers fully (config keys, ``distill.method``, search
spaces, ``--dry-run``) in the driver and in the Ray processes of a one-trial digits sweep."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config import schema
from orchestrator.distill import registry

ROOT = Path(__file__).resolve().parents[1]
TERM = "my_l2"  # the recipe's l2_logits under another name (a scratch clone may hold l2_logits in the tree too)
PLUGIN = "distill.plugins=[my_terms.l2_logits]"
DIGITS = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student", "data.batch_size=64"]


def recipe_module() -> str:
    """The first python block of docs/ARCHITECTURE.md's "### Add an objective", its term renamed to TERM."""
    section = (ROOT / "docs" / "ARCHITECTURE.md").read_text().split("### Add an objective", 1)[1].split("\n## ", 1)[0]
    code = textwrap.dedent(section.split("```python\n", 1)[1].split("```", 1)[0])
    assert code.count('name="l2_logits"') == 1
    return code.replace('name="l2_logits"', f'name="{TERM}"').replace("distill.l2_logits", f"distill.{TERM}")


def space_file(folder: Path) -> Path:
    """A search space that chooses ce+TERM and samples its weight."""
    space = folder / "space.yaml"
    space.write_text(f"params:\n  distill.method: {{type: categorical, choices: [ce+{TERM}]}}\n"
                     f"  distill.{TERM}.weight: {{type: float, low: 0.1, high: 1.0, log: true}}\n")
    return space


@pytest.fixture
def plugin_src(tmp_path, monkeypatch):
    """A folder holding the package ``my_terms`` with the recipe's module; this process forgets it afterwards
    (its term, its config section, its modules)."""
    src = tmp_path / "src"
    (src / "my_terms").mkdir(parents=True)
    (src / "my_terms" / "__init__.py").write_text("")
    (src / "my_terms" / "l2_logits.py").write_text(recipe_module())
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.setattr(registry, "_TERMS", dict(registry._TERMS))
    monkeypatch.setattr(schema, "DistillConfig", schema.DistillConfig)
    yield src
    for name in [m for m in sys.modules if m == "my_terms" or m.startswith("my_terms.")]:
        del sys.modules[name]


def test_a_plugin_term_is_a_config_section_and_listed_by_the_dry_run(plugin_src, tmp_path, capsys):
    from orchestrator.sweep.cli import main

    assert TERM not in registry.term_names()
    with pytest.raises(schema.ConfigError, match=f"distill.{TERM}"):  # unknown before the plug-in is named
        schema.load_config(None, [f"distill.{TERM}.weight=0.5"])
    cfg = schema.load_config(None, [PLUGIN, f"distill.method=ce+{TERM}", f"distill.{TERM}.weight=0.25"])
    assert cfg.distill.plugins == ["my_terms.l2_logits"] and getattr(cfg.distill, TERM).weight == 0.25
    assert schema.from_dict(schema.to_dict(cfg)) == cfg  # how trials and workers rebuild it
    with pytest.raises(schema.ConfigError, match=f"distill.{TERM}.weight"):
        schema.load_config(None, [PLUGIN, f"distill.{TERM}.weight=-1"])
    with pytest.raises(schema.ConfigError, match="distill.plugins.*no_such_pkg"):
        schema.load_config(None, ["distill.plugins=[no_such_pkg.terms]"])

    argv = ["--dry-run", *DIGITS, PLUGIN, f"distill.method=ce+{TERM}", f"distill.{TERM}.weight=0.25"]
    assert main([*argv, f"sweep.search_space={space_file(tmp_path)}"]) == 0
    out = capsys.readouterr().out
    assert f"ce+{TERM} = ce+{TERM}" in out
    assert f"{TERM}: weight distill.{TERM}.weight; reads logits" in out and f"knobs: distill.{TERM}.weight=0.25" in out


def test_the_objectives_doc_generated_with_a_plugin_lists_its_term(plugin_src, tmp_path, monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import objectives

    out, threads = tmp_path / "objectives.md", torch.get_num_threads()
    try:
        assert objectives.main(["--plugins", "my_terms.l2_logits", "--out", str(out)]) == 0
        assert objectives.main(["--plugins", "no_such_pkg.terms", "--out", str(out)]) == 2
    finally:
        torch.set_num_threads(threads)  # the script sets its own
    (row,) = [line for line in out.read_text().splitlines() if line.startswith(f"| `{TERM}`")]
    assert "no reference code: logit regression" in row and f"`distill.{TERM}.weight`" in row and "weight=1.0" in row
    assert "**Step cost" not in out.read_text()  # measured only with --costs


def test_an_installed_distribution_brings_its_term_through_the_entry_point_group(plugin_src):
    """A distribution whose metadata declares the module in distill_orchestrator.objectives (what pip writes for
    ``[project.entry-points."distill_orchestrator.objectives"]``): its term registers without any config key."""
    from orchestrator.distill.plugins import ENTRY_POINT_GROUP, PluginError, load_entry_points

    info = plugin_src / "my_terms-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-terms\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nl2 = my_terms.l2_logits\n")
    load_entry_points()
    assert TERM in registry.term_names() and registry.term(TERM).no_reference
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = my_terms.missing\n")
    with pytest.raises(PluginError, match="broken = my_terms.missing"):
        load_entry_points()


@pytest.mark.slow
def test_a_one_trial_digits_sweep_trains_a_plugin_term_through_ray_train(plugin_src, tmp_path, sqlite_store, isolated_cache):
    """The sweep runs in its own process with the package on PYTHONPATH, as a user runs it: its Ray's trial
    process imports the plug-in when it rebuilds the config, and the search space samples the term's weight."""
    space = space_file(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_src), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "DISTILL_RAY_TMPDIR": f"/tmp/distill-ray-plugin-{os.getpid()}"}
    env.pop("RAY_ADDRESS", None)
    args = ["--name", "plug", "--num-samples", "1", "--storage-path", str(tmp_path / "runs"), "--tracking-uri", uri,
            *DIGITS, "teacher.epochs=1", "train.epochs=1", f"sweep.search_space={space}", "sweep.confirm.top_k=0",
            "sweep.baseline=false", "sweep.paper_defaults=false", "export.formats=[]", PLUGIN]
    done = subprocess.run([sys.executable, "-m", "orchestrator.sweep", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("plug")
    (trial,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("orchestrator.kind") == "trial"]
    assert trial.info.status == "FINISHED"
    assert trial.data.params["distill.plugins"] == "['my_terms.l2_logits']"
    assert 0.1 <= float(trial.data.params[f"distill.{TERM}.weight"]) <= 1.0
    assert client.get_metric_history(trial.info.run_id, f"train/loss_{TERM}")
