"""Every registered term's value on fixed inputs, pinned (``tests/data/pinned/<case>.json``), so a refactor
cannot drift silently (torchdistill-style). Objectives are built through the registry from config values.

A case file (written by ``python -m orchestrator.distill.pin``): ``method``, ``config`` (dotted keys under
``distill.``), ``teachers`` (0-2), ``teacher_weights``, ``source`` (what computed the values) and ``expected``:
the terms of two training steps on :func:`orchestrator.distill.pin.fixed_inputs` (step 2 sees the state, e.g.
memory banks, that step 1 left). A term that declares no reference code (``no_reference``) needs no case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orchestrator.distill import registry
from orchestrator.distill.pin import case_values, main as pin_main

CASES = {p.stem: json.loads(p.read_text()) for p in sorted((Path(__file__).parent / "data" / "pinned").glob("*.json"))}


def test_every_term_is_pinned():
    pinned = {term for case in CASES.values() for step in case["expected"] for term in step}
    missing = {name for name in registry.term_names() if not registry.term(name).no_reference} - pinned
    assert not missing, f"registered term(s) without a pinned value in tests/data/pinned/: {sorted(missing)}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_term_values_match_the_pinned_ones(case):
    spec = CASES[case]
    for step, (values, expected) in enumerate(zip(case_values(spec), spec["expected"], strict=True), start=1):
        assert list(values) == list(expected)
        for name, value in expected.items():
            torch.testing.assert_close(torch.tensor(values[name]), torch.tensor(value), msg=f"{case} step {step} {name}")


def test_the_pin_command_writes_a_case_from_the_reference_values_and_refuses_others(tmp_path, capsys):
    """The KD case again, from values given as the reference code's (here: kd.json's own); a value the
    project's KD does not give is refused and nothing is written."""
    kd = CASES["kd"]
    values = tmp_path / "values.json"
    values.write_text(json.dumps([{"kd": step["kd"]} for step in kd["expected"]]))
    args = ["kd", "--reference", "HobbitLong/RepDistiller@b84f547", "--values", str(values), "--dir", str(tmp_path),
            "--set", *[f"{k}={v}" for k, v in kd["config"].items()]]
    assert pin_main(args) == 0
    written = json.loads((tmp_path / "kd.json").read_text())
    assert written["expected"] == kd["expected"] and written["config"] == kd["config"]
    assert "HobbitLong/RepDistiller@b84f547 (the reference code)" in written["source"]
    values.write_text(json.dumps([{"kd": step["kd"] * 1.01} for step in kd["expected"]]))
    (tmp_path / "kd.json").unlink()
    assert pin_main(args) == 1 and not (tmp_path / "kd.json").exists()
    assert "step 1 kd: this project" in capsys.readouterr().out
    assert pin_main(["kd", "--reference", "RepDistiller"]) == 2  # not repo@commit
    assert pin_main(["kd", "--inputs", str(tmp_path / "inputs.pt")]) == 0
    steps = torch.load(tmp_path / "inputs.pt")["steps"]
    assert len(steps) == 2 and steps[0]["teachers"][0]["logits"].shape == (8, 10)
