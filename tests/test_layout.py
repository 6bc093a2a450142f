"""The layout shows the architecture: entry points at the top of ``orchestrator/``, one package per job below
them, each saying its job, and the dependencies between the jobs run one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from test_import_cycles import _imports, _modules

ROOT = Path(__file__).resolve().parent.parent
TOP = ROOT / "orchestrator"


def _reach(start: str) -> set[str]:
    """Every project module ``start`` imports, directly or not (imports inside functions count)."""
    modules = _modules()
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for dep in _imports(name, modules[name], modules):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_top_level_holds_entry_points_and_the_package_marker_only():
    modules = sorted(p.name for p in TOP.glob("*.py"))
    assert len(modules) <= 8, modules
    for name in modules:
        if name == "__init__.py":
            continue
        source = (TOP / name).read_text()
        assert 'if __name__ == "__main__":' in source, f"orchestrator/{name} is not an entry point"


def test_every_package_says_its_one_job():
    for init in sorted(TOP.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 5, f"{init.relative_to(ROOT)} has no docstring saying its job"


def test_the_jobs_depend_one_way():
    """No lower job imports a higher one, even inside a function."""
    modules = _modules()
    higher = {
        "orchestrator.teacher": ("orchestrator.run", "orchestrator.sweep", "orchestrator.teacher_outputs", "pipelines"),
        "orchestrator.teacher_outputs": ("orchestrator.run", "orchestrator.sweep", "pipelines"),
        "orchestrator.run": ("orchestrator.sweep", "pipelines"),
        "orchestrator.config": ("orchestrator.run", "orchestrator.sweep", "orchestrator.teacher", "pipelines"),
        "orchestrator.deploy": ("orchestrator.run", "orchestrator.sweep", "orchestrator.teacher", "pipelines",
                                "orchestrator.export"),
        "orchestrator.infra": ("orchestrator.run", "orchestrator.sweep", "orchestrator.teacher", "pipelines"),
        "orchestrator.report": ("orchestrator.run", "orchestrator.sweep", "orchestrator.teacher", "pipelines"),
    }
    for low, banned in higher.items():
        for name in [m for m in modules if m == low or m.startswith(low + ".")]:
            bad = sorted(d for d in _reach(name) if d.startswith(banned))
            assert not bad, f"{name} imports {bad}"


def test_loading_a_checkpoint_imports_no_training_code():
    code = ("import sys, orchestrator.teacher.checkpoint\n"
            "print(sorted(m for m in sys.modules if m.startswith(('orchestrator.run', 'orchestrator.sweep', 'ray'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
