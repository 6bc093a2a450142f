"""Every exception type of the project crosses a process boundary intact (Ray re-creates errors by pickling)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import orchestrator
import pipelines


def _project_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (orchestrator, pipelines):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == info.name:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


EXCEPTIONS = _project_exceptions()


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance built from its constructor's own parameters (strings, or a list where one is expected)."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
              and p.default is p.empty]
    if not params:
        return cls("what went wrong")
    return cls(*[["/a", "/b"] if p.name.startswith("looked") else f"<{p.name}>" for p in params])


def test_the_project_has_its_exception_types():
    names = {cls.__name__ for cls in EXCEPTIONS}
    assert {"ConfigError", "YamlSyntaxError", "KnobError", "DatasetNotFoundError", "TeacherCheckpointError"} <= names


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: c.__name__)
def test_every_exception_survives_pickle(cls):
    exc = _instance(cls)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert str(back) == str(exc)
    assert vars(back) == vars(exc)
