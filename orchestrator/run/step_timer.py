"""Seconds per phase of the Learner's batch step, for benchmarks and profiling.

Attach one to a Learner (``learner.step_timer = StepTimer(learner.device)``) and every batch step of
``train_one_epoch`` (pre-stage included) adds the time of each of its phases to ``totals``; detach it
(``None``, the default) and the step runs as without it. Timing changes no result: it only reads clocks
(and, on a GPU, waits for the device at each phase's end, so a phase holds its own kernels).
"""

from __future__ import annotations

import time

import torch

PHASES = (
    "loader",  # the next batch from the train loader
    "to_device",  # images, labels, indices to the device
    "teacher",  # the teacher forward, or the rows of its precomputed outputs
    "student",  # the student forward (every view of the batch)
    "objective",  # every loss term and their sum
    "check",  # the non-finite loss guard
    "backward",  # zero_grad + backward
    "optimizer",  # the optimiser step
    "bookkeeping",  # .item() of the loss and of each term
)


class StepTimer:
    """Sums seconds per phase (:data:`PHASES`) over the steps it sees; ``steps`` counts them."""

    def __init__(self, device: torch.device | str = "cpu"):
        device = torch.device(device)
        self._cuda = device if device.type == "cuda" else None
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._last = 0.0

    def _now(self) -> float:
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        return time.perf_counter()

    def start(self) -> None:
        """Start the clock (the Learner calls it before asking its loader for the first batch)."""
        self._last = self._now()

    def lap(self, phase: str) -> None:
        """The time since the last lap (or start) goes to ``phase``; ``bookkeeping`` ends a step."""
        now = self._now()
        self.totals[phase] += now - self._last
        self._last = now
        if phase == "bookkeeping":
            self.steps += 1

    def per_step(self) -> dict[str, float]:
        """Mean seconds per step of each phase."""
        return {phase: seconds / max(self.steps, 1) for phase, seconds in self.totals.items()}
