"""distill/, models/ and data/ are plain PyTorch: they import neither ray nor mlflow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGES = ("distill", "models", "data")
ROOT = Path(__file__).resolve().parent.parent / "orchestrator"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_ray_or_mlflow_import_in_source():
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(_imported_modules(path) & {'ray', 'mlflow'})}"
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if _imported_modules(path) & {"ray", "mlflow"}
    ]
    assert not offenders, offenders


def test_importing_the_core_loads_neither_ray_nor_mlflow():
    code = (
        "import sys, orchestrator.distill, orchestrator.models, orchestrator.data, orchestrator.data.negatives; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
