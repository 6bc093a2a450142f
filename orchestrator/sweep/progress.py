"""The search's progress lines: one per reported epoch, one per finished, stopped or failed trial."""

from __future__ import annotations

import time

from ray import tune

from orchestrator.config.objectives import OVER_BUDGET


def trial_number(trial) -> str:
    """Tune's trial number (the head of its experiment tag), else its id."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return head if head.isdigit() else trial.trial_id


class ProgressPrinter(tune.Callback):
    """One line per reported epoch, and one per finished/stopped/failed trial."""

    def __init__(self, metric: str, mode: str, epochs: int, total: int):
        self.metric, self.mode, self.epochs, self.total = metric, mode, epochs, total
        self.best: tuple[float, str] | None = None
        self.done = 0
        self.start = time.perf_counter()

    def _clock(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 60:3d}m{s % 60:02d}s"

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None or result.get(OVER_BUDGET):
            return
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, trial_number(trial))
        running = sum(t.status == "RUNNING" for t in trials)
        print(
            f"{self._clock()}  trial {trial_number(trial):>3}  epoch {result.get('epoch', '?')}/"
            f"{trial.config.get('train.epochs', self.epochs)}  "
            f"{self.metric} {value:.4f}  train/loss {result.get('train/loss', float('nan')):.4f}  "
            f"{result.get('throughput/train_img_s', 0):6.0f} img/s  | best {self.best[0]:.4f} "
            f"(trial {self.best[1]})  | {running} running, {self.done}/{self.total} done",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        last = trial.last_result or {}
        epochs = last.get("epoch", 0)
        if last.get(OVER_BUDGET):
            how = "over sweep.budget: not trained"
        elif epochs >= trial.config.get("train.epochs", self.epochs):  # its own epochs when the space samples them
            how = "completed"
        else:
            how = f"stopped early after {epochs} epoch(s)"
        print(f"{self._clock()}  trial {trial_number(trial):>3}  {how}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        print(f"{self._clock()}  trial {trial_number(trial):>3}  FAILED (why: after the search, one line per trial)",
              flush=True)
