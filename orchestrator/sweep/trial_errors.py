"""Why trials failed, told in one line each: a config or data problem is the user's to fix (exit 2), a crash
keeps its traceback in a log file the printout names. Ray's own per-trial tracebacks stay off the console."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.schema import ConfigError
from orchestrator.data.common import DatasetNotFoundError
from orchestrator.distill.checks import KnobError
from orchestrator.infra.safe_load import UnsafeFileError
from orchestrator.sweep.errors import SweepError
from orchestrator.teacher.checkpoint import TeacherCheckpointError

# Problems of the configuration or the data: the same input fails the same way on every retry.
USER_PROBLEMS = (ConfigError, KnobError, DatasetNotFoundError, TeacherCheckpointError, UnsafeFileError)
# Tune's console records of failed trials: a traceback each ("Trial task failed for trial ..."), then a list.
TUNE_LOGGERS = {"ray.tune.execution.tune_controller": "Trial task failed", "ray.tune.tune": "Trials did not complete"}
_TRIAL_DIR = re.compile(r"_[0-9a-f]{5,}_(\d+)(?:_|$)")


class TrialInputError(SweepError):
    """Trials failed on a config or data problem (the message: one line per problem, with the trial numbers)."""


@dataclass(frozen=True)
class TrialFailure:
    """One failed trial: its number, the root error and whether it is the user's input (not a crash)."""

    number: int
    error: BaseException

    @property
    def is_user_problem(self) -> bool:
        return isinstance(self.error, USER_PROBLEMS)

    @property
    def line(self) -> str:
        return str(self.error) if self.is_user_problem else f"{type(self.error).__name__}: {self.error}"


def root_error(exc: BaseException) -> BaseException:
    """The error a trial raised, out of Ray's wrappers: ``RayTaskError.cause``, a worker group's
    ``worker_failures``, or the ``__cause__`` chain; ``exc`` itself when nothing is wrapped."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        failures = getattr(exc, "worker_failures", None)
        inner = getattr(exc, "cause", None) or (next(iter(failures.values()), None) if failures else None)
        inner = inner or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def trial_number_of(path: str | Path | None) -> int:
    """Tune's 1-based trial counter from a trial folder ``<trainable>_<id>_<N>_...`` (0 when unknown)."""
    match = _TRIAL_DIR.search(Path(str(path or "")).name)
    return int(match.group(1)) if match else 0


def failures(results: Iterable) -> list[TrialFailure]:
    """The failed trials of a Tune ``ResultGrid`` (or any iterable of Results), by trial number."""
    found = [TrialFailure(trial_number_of(r.path), root_error(r.error)) for r in results if r.error is not None]
    return sorted(found, key=lambda f: f.number)


def report(found: list[TrialFailure], log_dir: Path) -> None:
    """Raise :class:`TrialInputError` naming each config/data problem once (with its trials); print one line per
    crashed trial naming the file that holds its traceback (``log_dir/trial-NNN.log``)."""
    problems: dict[str, list[int]] = {}
    for f in found:
        if f.is_user_problem:
            problems.setdefault(f.line, []).append(f.number)
            continue
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"trial-{f.number:03d}.log"
        log.write_text("".join(traceback.format_exception(f.error)))
        print(f"trial {f.number} crashed: {f.line.splitlines()[0] if f.line else ''} (traceback: {log}; "
              "also in its MLflow run's orchestrator.error tag)", flush=True)
    if problems:
        raise TrialInputError("\n".join(
            f"{'trial' if len(n) == 1 else 'trials'} {', '.join(map(str, n))}: {line}" for line, n in problems.items()))


class _DropRecords(logging.Filter):
    """Drops the records whose message starts with ``prefix``: :func:`report` tells what failed."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextmanager
def quiet_trial_tracebacks() -> Iterator[None]:
    """While the search runs, Tune's per-trial error tracebacks stay off the console."""
    filters = [(logging.getLogger(name), _DropRecords(prefix)) for name, prefix in TUNE_LOGGERS.items()]
    for logger, quiet in filters:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger, quiet in filters:
            logger.removeFilter(quiet)
