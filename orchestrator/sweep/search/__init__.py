"""The sweep's search: the search space, its objectives, the Tune search stage and the Pareto-aware early stopping."""
