"""What lets a sweep whose driver was killed (SIGKILL, a lost machine) resume without issuing anything twice.

Three records outlive the driver and must agree on resume: Tune's experiment state (trials, their numbers
and the searcher; saved every few seconds and at trial checkpoints), the Optuna journal (written at once
on every ask and tell) and the MLflow runs (opened by the trials themselves). Tune's state lags the other
two. Before this module, a trial created and started after Tune's last save was unknown to the restored
Tune: it was created again, with the same number and new values, next to its MLflow run and a RUNNING
Optuna trial that nobody finished (issue #14).

- :func:`save_state_before_trials_start`: Tune saves its experiment state, synced to the storage path,
  before a trial that is not in it yet gets an actor. A trial whose function ran (an MLflow run, a
  checkpoint) is then always one the restored Tune resumes, under its own id and number.
- :class:`JournalSearch`: Optuna's journal is the truth about its trials on restore. An Optuna trial
  asked for a Tune trial that the driver died before saving is given to the next new Tune trial (same
  number, same values: the sweep samples what an uninterrupted one would), and trials the journal has
  finished are not reported to again.
"""

from __future__ import annotations

import weakref

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


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
