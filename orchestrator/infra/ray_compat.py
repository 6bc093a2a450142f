"""The one place that uses private Ray and Optuna internals, each because no public API does the job (checked
against Ray 2.60 and Optuna 4-5), with the versions they were tested on and a check that each still exists.

What uses them:

- Resume without issuing anything twice (a sweep whose driver was killed). Three records outlive the driver
  and must agree on resume: Tune's experiment state (trials, their numbers and the searcher; saved every few
  seconds and at trial checkpoints), the Optuna journal (written at once on every ask and tell) and the
  MLflow runs (opened by the trials themselves). Tune's state lags the other two: a trial created and started
  after Tune's last save was unknown to the restored Tune and was created again, with the same number and new
  values, next to its MLflow run and a RUNNING Optuna trial that nobody finished.

  - :func:`save_state_before_trials_start`: Tune saves its experiment state, synced to the storage path,
    before a trial that is not in it yet gets an actor (``TuneController._schedule_trial_actor`` wrapped: Tune
    has no public hook between creating a trial and starting its actor; a ``Callback``'s ``on_trial_start``
    comes after the actor runs the trial's function).
  - :class:`JournalSearch`: Optuna's journal is the truth about its trials on restore. An Optuna trial asked
    for a Tune trial that the driver died before saving is given to the next new Tune trial (same number, same
    values), and trials the journal has finished are not reported to again (``OptunaSearch``'s ``_ot_study``,
    ``_ot_trials``, ``_completed_trials`` and ``optuna.Trial``'s ``_trial_id``: ``OptunaSearch`` exposes
    neither its study nor its trial map).
- :func:`tune_stop_signal`: whether Tune has asked a trial to stop, taken at the trial's start
  (``ray.train._internal.session``'s stop event: ``tune.get_context()`` does not say it, and a worker-group
  trial waiting in ``fit()`` learns it only when its Train controller dies).
- :func:`local_ray_kwargs`: a local Ray's temp dir (``ray.init(_temp_dir=...)``; ``RAY_TMPDIR`` would move the
  whole system temp dir of every Ray process instead).

:data:`TESTED` is the range of versions this was tested on (also in pyproject.toml, ``[tool.distill-orchestrator]``);
:func:`version_warnings` says when the installed ones are outside it, and :func:`missing_internals` names each
internal that is gone (``tests/test_ray_compat.py`` fails with that name).
"""

from __future__ import annotations

import inspect
import os
import weakref
from collections.abc import Callable
from importlib.metadata import version

import optuna
import ray
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

# package -> (lowest tested, first untested) release: the internals below exist and behave as used there.
TESTED = {"ray": ("2.60", "2.61"), "optuna": ("4.0", "6.0")}


class JournalSearch(OptunaSearch):
    """``OptunaSearch`` over a persistent Optuna storage (the sweep folder's journal) that, after Tune
    restores it from a state older than the journal, re-issues the journal's orphaned trials and treats
    the journal's finished trials as finished."""

    def suggest(self, trial_id: str):
        if self._ot_study is not None and trial_id not in self._ot_trials:
            orphan = next(iter(self.orphans()), None)
            if orphan is not None:
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
        return super().suggest(trial_id)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        finished = {t.number for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._completed_trials |= {tid for tid, t in self._ot_trials.items() if t.number in finished}

    def orphans(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING trials of the journal that no Tune trial this searcher knows owns, oldest first."""
        owned = {t.number for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return sorted((t for t in running if t.number not in owned), key=lambda t: t.number)


_saved_trials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # controller -> ids in its saved state


def save_state_before_trials_start() -> None:
    """Make Tune (this process, once) save its experiment state and wait for the copy to the storage path
    before it gives an actor to a trial that is not in the saved state yet.

    Ray Tune 2.60 has no public hook for this: ``TuneController._schedule_trial_actor`` (every trial passes
    it before its actor is created or a cached one is reused; the trial's function runs only later, on
    the actor's first ``train``) is wrapped to call ``TuneController.checkpoint(force=True, wait=True)``,
    what Tune itself calls at the end of an experiment. One save covers every trial created so far."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController._schedule_trial_actor
    if getattr(original, "_saves_state_first", False):
        return

    def _schedule_trial_actor(self, trial):
        saved = _saved_trials.setdefault(self, set())
        if trial.trial_id not in saved:
            self.checkpoint(force=True, wait=True)
            saved.update(t.trial_id for t in self.get_trials())
        return original(self, trial)

    _schedule_trial_actor._saves_state_first = True
    TuneController._schedule_trial_actor = _schedule_trial_actor


def tune_stop_signal() -> Callable[[], bool]:
    """Whether Tune has asked this trial to stop (ASHA, or the end of the search), as a function to call later.
    The trial's thread learns it only at its next report, with SystemExit; a worker-group trial waits in
    ``fit()`` instead, and Tune removes the trial's placement group, and with it the Train controller, first.
    Tune sets the trial session's stop event, then drops the session: so it is taken now."""
    from ray.train._internal.session import get_session

    session = get_session()
    return (lambda: False) if session is None else session.stop_event.is_set


def local_ray_kwargs() -> dict:
    """``ray.init`` arguments of a local Ray started by this tool: its temp dir (``$DISTILL_RAY_TMPDIR``)."""
    return {"_temp_dir": os.environ.get("DISTILL_RAY_TMPDIR", "/tmp/distill-ray")}


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def version_warnings() -> list[str]:
    """One line per package whose installed version is outside :data:`TESTED` (resume safety and trial stops
    rely on internals that may have changed)."""
    lines = []
    for package, (low, high) in TESTED.items():
        installed = version(package)
        if not _release(low) <= _release(installed) < _release(high):
            lines.append(f"warning: {package} {installed} is outside the tested range >={low},<{high}; the resume "
                         "safety and trial stops use its internals (orchestrator/infra/ray_compat.py)")
    return lines


def missing_internals() -> list[str]:
    """The private APIs this module uses that the installed Ray/Optuna no longer have, by name."""
    from ray.tune.execution.tune_controller import TuneController

    missing = []
    if not callable(getattr(TuneController, "_schedule_trial_actor", None)) or \
            not callable(getattr(TuneController, "checkpoint", None)):
        missing.append("ray.tune.execution.tune_controller.TuneController._schedule_trial_actor / .checkpoint")
    try:
        from ray.train._internal.session import get_session  # noqa: F401
    except ImportError:
        missing.append("ray.train._internal.session.get_session")
    if "_temp_dir" not in inspect.getsource(inspect.unwrap(ray.init)):
        missing.append("ray.init(_temp_dir=...)")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
        trial = optuna.create_study().ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    for attribute in ("_ot_study", "_ot_trials", "_completed_trials"):
        if not hasattr(search, attribute):
            missing.append(f"ray.tune.search.optuna.OptunaSearch.{attribute}")
    if not hasattr(trial, "_trial_id"):
        missing.append("optuna.Trial._trial_id")
    return missing
