"""Objective terms from outside this package: modules named in ``distill.plugins``, and entry points.

A plug-in is a module that calls :func:`~orchestrator.distill.registry.register_term` (and optionally
``register_preset``) when it is imported, exactly like a term module of this package. Two ways in:

- the config names it, ``distill.plugins: [my_pkg.l2_logits]``: the config loader imports it before it
  builds the ``distill`` section (:func:`orchestrator.config.schema.load_plugins`), so its knobs are config
  keys (``distill.<term>.*``). Every Ray process that rebuilds the config (a trial, a Train worker) imports
  it again, so the module must be importable there too: on PYTHONPATH (a local Ray's workers inherit the
  driver's environment), installed on every node, or shipped with Ray's ``runtime_env``;
- an installed distribution declares it in the entry-point group :data:`ENTRY_POINT_GROUP`; it is
  imported with ``orchestrator.distill`` itself (in every process).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable

ENTRY_POINT_GROUP = "distill_orchestrator.objectives"


class PluginError(ImportError):
    """A plug-in module could not be imported; ``name`` is the module (or entry point), ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        self.name_, self.reason = name, reason
        super().__init__(f"objective plug-in {name!r}: {reason}")

    def __reduce__(self):
        return self.__class__, (self.name_, self.reason)


def import_plugins(names: Iterable[str]) -> None:
    """Import each dotted module name in ``names`` (once per process; its terms register themselves)."""
    for name in names:
        if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
            raise PluginError(str(name), "a dotted module name, e.g. my_pkg.l2_logits")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise PluginError(name, f"an importable module ({exc}); put its folder on PYTHONPATH or install its "
                                    "package (on every Ray node)") from exc
        except Exception as exc:  # its own error while registering, e.g. a term name taken twice
            raise PluginError(name, f"importing it failed: {type(exc).__name__}: {exc}") from exc


def load_entry_points() -> None:
    """Import every module declared in the entry-point group :data:`ENTRY_POINT_GROUP`."""
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:
            raise PluginError(f"{point.name} = {point.value}",
                              f"entry point of group {ENTRY_POINT_GROUP} failed: {type(exc).__name__}: {exc}") from exc
