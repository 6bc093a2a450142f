"""Test-only: SIGKILL a Ray Train worker after it logged epoch ``$DISTILL_TEST_KILL_AT_EPOCH``, before its
checkpoint, once per ``$DISTILL_TEST_KILL_MARKER`` file (created when it fires).

Put this folder first on ``PYTHONPATH`` of a sweep started by a test (its Ray workers inherit it): when
``orchestrator.run.worker`` is imported, its per-epoch checkpoint guard ``disk_full_is_clear(epoch)``, entered
right after the epoch is logged, is wrapped to kill the process first. Production code holds no test hook.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import signal
import sys

TARGET = "orchestrator.run.worker"


def _kill_once(epoch: int) -> None:
    if os.environ.get("DISTILL_TEST_KILL_AT_EPOCH") != str(epoch):
        return
    try:
        os.close(os.open(os.environ["DISTILL_TEST_KILL_MARKER"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _patch(module) -> None:
    guard = module.disk_full_is_clear

    @contextlib.contextmanager
    def killing_guard(epoch: int):
        _kill_once(epoch)
        with guard(epoch):
            yield

    module.disk_full_is_clear = killing_guard


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("DISTILL_TEST_KILL_AT_EPOCH"):
    sys.meta_path.insert(0, _PatchAfterImport())
