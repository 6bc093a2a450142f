"""One stage-selector syntax for every term that reads stages, checked when the sweep's config is validated:
a selector naming a stage the student lacks exits 2 with one line, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.cli import main

LR_ONLY = Path(__file__).parent / "data" / "lr_only_space.yaml"
DIGITS = ["data.dataset=digits", "model.teacher=tiny_teacher", "model.student=tiny_student",
          f"sweep.search_space={LR_ONLY}"]


@pytest.mark.parametrize("term,knob", [("nst", "stages"), ("kdsvd", "stages"), ("ab", "stages"), ("fsp", "stages"),
                                       ("at", "stages"), ("sp", "stages"), ("vid", "stages")])
def test_slices_are_accepted_by_every_stage_knob(term, knob, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *DIGITS, f"distill.method=ce+{term}", f"distill.{term}.{knob}=0:"]) == 0
    assert "nothing was started" in capsys.readouterr().out


@pytest.mark.parametrize("term,knob", [("nst", "stages"), ("ab", "stages"), ("at", "stages"), ("ft", "stage"),
                                       ("fitnet", "stage")])
def test_a_stage_the_student_lacks_is_refused_at_validation(term, knob, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--dry-run", *DIGITS, f"distill.method=ce+{term}", f"distill.{term}.{knob}=stage9"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: config key 'distill.{term}.{knob}'"), err
    assert "stage9" in err[0] and "'stage1', 'stage2'" in err[0], err  # names the stages the student has
    assert not (tmp_path / "runs").exists()
