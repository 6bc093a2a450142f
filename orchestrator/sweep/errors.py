"""The sweep's own error."""


class SweepError(RuntimeError):
    """The sweep ran but produced nothing usable (e.g. every trial failed)."""
