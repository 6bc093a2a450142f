"""docs/CONFIG.md is generated from the config classes and up to date; every key has its line."""

from __future__ import annotations

import difflib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config.schema import Config, flatten, load_pipeline_config, to_dict
from orchestrator.config.reference import COMMAND, field_docs, keys, render

ROOT = Path(__file__).resolve().parents[1]


def test_committed_reference_is_what_the_generator_prints():
    """The CLI's output equals docs/CONFIG.md; when a key changed, the integrator reruns the one-liner. A term
    that declares no reference code (``no_reference``) may lack its section until then (it is one module and
    one test file)."""
    out = subprocess.run([sys.executable, "-m", "orchestrator.config.reference"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    committed = (ROOT / "docs" / "CONFIG.md").read_text()
    out = _without_new_unreferenced_terms(out, committed)
    diff = "".join(difflib.unified_diff(committed.splitlines(True), out.splitlines(True), "docs/CONFIG.md",
                                        "generated", n=0))
    assert out == committed, f"docs/CONFIG.md is out of date; regenerate it with:\n    {COMMAND}\n{diff[:3000]}"


def _without_new_unreferenced_terms(text: str, committed: str) -> str:
    """``text`` less the ``distill.<term>`` sections of terms without reference code that ``committed`` lacks."""
    from orchestrator.distill import registry

    skip = {f"## `distill.{name}`" for name in registry.term_names() if registry.term(name).no_reference}
    parts = text.split("\n## ")
    kept = [parts[0]] + [p for p in parts[1:] if not (f"## {p.splitlines()[0]}" in skip
                                                       and f"## {p.splitlines()[0]}\n" not in committed)]
    return "\n## ".join(kept)


def test_every_key_of_the_config_is_listed_with_a_line():
    """The reference walks every section: the keys of the resolved config (sweep and pipeline) are its keys."""
    listed = {k.key: k for k in keys(Config)}
    resolved = set(flatten(to_dict(load_pipeline_config())))
    plain = {key for key in listed if "<i>" not in key}
    assert plain == resolved, f"only listed: {sorted(plain - resolved)}; only in the config: {sorted(resolved - plain)}"
    missing = [k.where for k in listed.values() if not k.doc]
    assert not missing, ("these config fields have no line: add a trailing '# ...' comment to each field "
                         f"(or metadata={{'doc': ...}}), then run {COMMAND}: {missing}")
    assert {"pipeline.teachers.<i>.arch", "distill.crd.nce_k", "sweep.confirm.level"} <= set(listed)


@dataclass
class _Base:
    inherited: int = 1  # from the base class


@dataclass
class _Example(_Base):
    trailing: str = "#"  # the comment, not the '#' in the string
    # the block above the field,
    # joined on one line
    above: float = 0.5
    spans: list[int] = field(  # a field over several lines
        default_factory=lambda: [1, 2])
    meta: bool = field(default=True, metadata={"doc": "from the field's metadata"})  # ignored: metadata wins
    bare: int = 3


def test_lines_come_from_comments_metadata_and_base_classes():
    assert field_docs(_Example) == {
        "inherited": "from the base class",
        "trailing": "the comment, not the '#' in the string",
        "above": "the block above the field, joined on one line",
        "spans": "a field over several lines",
        "meta": "from the field's metadata",
    }


def test_a_row_gives_type_default_and_line():
    text = render()
    assert "| `sweep.seeds` | `list[int] \\| None` | `null` | training seeds every trial shares" in text
    assert "| `export.formats` | `list[str]` | `[onnx]` |" in text
    assert "| `distill.method` | `str` | `crd_kd` | a preset" in text
