"""Tune's per-trial log, cut to the one file the leaderboard reads.

Tune writes its per-trial logs (by default ``result.json``, ``params.json``, ``params.pkl``, ``progress.csv`` and a
TensorBoard file) into the driver's staging folder, and uploads that whole folder to the storage path at every
experiment-state save: with checkpoint retention and the save before each trial starts, twice per trial, so
a 1,000-trial sweep re-copied ~5,000 files per save (docs/BENCHMARKS.md section 10). The sweep keeps only
``result.json`` (one JSON line per report: what ``Result.metrics_dataframe`` reads, and what a restored trial
appends to), and :func:`orchestrator.infra.cluster.connect` turns Tune's automatic loggers off
(``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS``). Every metric is in MLflow and in ``leaderboard.csv``.
"""

from __future__ import annotations

from ray.tune.logger import JsonLoggerCallback


class ResultsLog(JsonLoggerCallback):
    """Tune's ``JsonLoggerCallback`` without ``params.json``/``params.pkl`` (a trial's config is in Tune's
    experiment state, its MLflow run and the leaderboard)."""

    def update_config(self, trial, config: dict) -> None:
        """Writes nothing (Tune's own writes the config to ``params.json`` and ``params.pkl``)."""
