"""Distillation objectives (plain PyTorch): registered loss terms composed into an :class:`Objective`.

Importing this package imports every module in it (but the commands, :data:`COMMANDS`), so a term module
registers itself (:func:`registry.register_term`) just by being here; then the modules of installed
plug-ins (:mod:`orchestrator.distill.plugins`: entry-point group ``distill_orchestrator.objectives``).
See :mod:`orchestrator.distill.registry` for what a term declares and ``docs/ARCHITECTURE.md`` for how to
add one, in the tree or outside it.
"""

from __future__ import annotations

import importlib
import pkgutil

from orchestrator.distill.base import Batch, Shapes, Term, TermContext
from orchestrator.distill.objective import Objective, build_objective
from orchestrator.distill.registry import method_names, paper_defaults, term_names

COMMANDS = ("pin",)  # run with python -m, never imported here

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in COMMANDS:
        importlib.import_module(f"{__name__}.{_module.name}")

from orchestrator.distill.plugins import load_entry_points  # noqa: E402

load_entry_points()

from orchestrator.distill.plain import evaluate  # noqa: E402  (after the terms have registered)

__all__ = [
    "Batch", "Shapes", "Term", "TermContext", "Objective", "build_objective", "evaluate", "method_names",
    "paper_defaults", "term_names",
]
