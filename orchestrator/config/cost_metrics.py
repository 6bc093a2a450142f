"""The names of a student's cost metrics (no dependencies: config validation reads them without torch)."""

# cost record field -> MLflow metric / leaderboard column
METRICS = {"params": "cost/params", "macs": "cost/macs", "latency_ms_b1": "cost/latency_ms",
           "latency_ms_b64": "cost/latency_ms_b64"}
ALIASES = {m.split("/", 1)[1]: m for m in METRICS.values()}  # "macs" -> "cost/macs", ...
