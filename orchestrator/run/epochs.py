"""The one training loop: epochs, validation, the last epoch's test, a report callback per epoch.

Sweep trials and confirmation jobs (in Ray Train workers), teachers and students trained alone,
and the pipeline's runs all train through :func:`fit`. Several trainers (one per training seed)
advance epoch by epoch together and are reported as their mean. Plain PyTorch: Ray and MLflow
enter only through the callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestrator.run.learner import Learner

EpochCallback = Callable[[dict, list[dict]], None]


def run_epochs(trainers: Sequence[Learner], *, evaluate_test: bool = False, on_epoch: EpochCallback | None = None) -> dict:
    """Train every trainer from its current epoch to ``train.epochs``, one epoch at a time.

    Each epoch, per trainer: train, validate (``val/*``) and, at the last epoch with ``evaluate_test``,
    test (``test/*``). Then ``on_epoch(metrics, per_seed)``: ``metrics`` = the mean over the trainers
    of every number, each seed's ``val/``, ``test/`` and ``train/loss*`` as ``seed<s>/<metric>`` when
    there are several, and ``epoch`` (1-based); ``per_seed`` = each trainer's own dict.
    Returns the last ``metrics`` (empty if there was nothing left to train).
    """
    seeds = [t.cfg.seed for t in trainers]
    metrics: dict = {}
    while trainers[0].epoch < trainers[0].cfg.train.epochs:
        per_seed = [_epoch(trainer, evaluate_test) for trainer in trainers]
        metrics = mean_over_seeds(per_seed)
        if len(seeds) > 1:
            metrics.update({f"seed{s}/{k}": v for s, m in zip(seeds, per_seed) for k, v in m.items()
                            if k.startswith(("val/", "test/", "train/loss"))})
        metrics["epoch"] = trainers[0].epoch
        if on_epoch is not None:
            on_epoch(metrics, per_seed)
    return metrics


def _epoch(trainer: Learner, evaluate_test: bool) -> dict:
    metrics = trainer.train_one_epoch()
    metrics.update({f"val/{k}": v for k, v in trainer.evaluate("val").items()})
    if evaluate_test and trainer.epoch == trainer.cfg.train.epochs:
        metrics.update({f"test/{k}": v for k, v in trainer.evaluate("test").items()})
    return metrics


def mean_over_seeds(per_seed: list[dict]) -> dict:
    """The mean of every numeric metric over the seeds' dicts (all have the same keys)."""
    return {k: sum(m[k] for m in per_seed) / len(per_seed) for k in per_seed[0] if isinstance(per_seed[0][k], (int, float))}
