"""The local Ray the sweep starts: what its workers inherit."""

from __future__ import annotations

import os


def test_reused_trial_actors_wait_for_the_previous_trial(ray_session):
    """In-process trials reuse their actor; Tune's default 2 s wait for the previous trial's thread is too short
    on a loaded machine (the next trial then errors and the sweep stalls), so the workers get 300 s."""
    from orchestrator.cluster import REUSE_WAIT

    @ray_session.remote
    def seen() -> str | None:
        return os.environ.get(REUSE_WAIT)

    assert ray_session.get(seen.remote()) == "300"
