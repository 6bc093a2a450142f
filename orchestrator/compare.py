"""``python -m orchestrator.compare``: leaderboard, plots and cross-sweep comparison from MLflow.

Examples::

    python -m orchestrator.compare --experiment fmnist-crd-kd
    python -m orchestrator.compare --experiment kd-sweep crd-sweep crd-kd-sweep --out reports/methods
    python -m orchestrator.compare --run 3f2a... --tracking-uri http://127.0.0.1:5000

Writes ``leaderboard.csv``, ``sweeps.csv``, ``leaderboard.html`` and PNG plots to ``--out``
(default ``./reports/<experiment or run id>``) and prints the leaderboard and, per sweep, its result: the
chosen config, its test mean ± sd over the confirmation seeds and its paired gains with their intervals
(the parent run's ``confirm/*`` metrics, the numbers of the sweep's ``summary.json``); the best single
search trial is printed as what it is, one trial on the search seeds. Bad input (unknown
experiment or run id, unreachable server) prints one ``error: ...`` line and exits with code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from orchestrator.infra import tracking
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.compare",
        description="Compare distillation sweeps logged to MLflow: leaderboard (terminal, CSV, HTML), "
        "plots (score against each searched parameter, learning curves, optimisation history, "
        "parameter importance) and, for several sweeps, a side-by-side comparison.",
        epilog="example:\n  python -m orchestrator.compare --experiment kd-sweep crd-sweep crd-kd-sweep\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", nargs="+", metavar="NAME", help="MLflow experiment(s) = sweep name(s)")
    which.add_argument("--run", nargs="+", metavar="PARENT_RUN_ID", help="sweep parent run id(s)")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
    )
    parser.add_argument("--out", help="output folder (default: ./reports/<experiment or run id>)")
    parser.add_argument("--metric", default="val/acc1", help="trial score (default: val/acc1)")
    parser.add_argument("--mode", choices=("max", "min"), default="max", help="better is max or min (default: max)")
    parser.add_argument("--top", type=int, default=5, help="trials in the learning-curve plot (default: 5)")
    return parser


def default_out(names: list[str]) -> Path:
    return Path("reports") / re.sub(r"[^A-Za-z0-9_.+-]+", "_", "+".join(names))


def printable(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as text: floats with 4 significant digits, integers as such, missing values as '-'."""

    def cell(value) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return frame.astype(object).map(cell)


def _check_local_store(uri: str) -> None:
    """A report only reads: a missing SQLite file is a wrong URI, not a store to create."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            raise tracking.TrackingError(f"no MLflow database at {path}; pass --tracking-uri (or set MLFLOW_TRACKING_URI)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.report.runs import ReportError
    from orchestrator.report.write import write_report

    names = args.experiment or args.run
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        _check_local_store(uri)
        client = tracking.check_connection(uri)
        report = write_report(
            client, names, args.out or default_out(names), kind="experiment" if args.experiment else "run",
            metric=args.metric, mode=args.mode, top=args.top,
        )
    except (tracking.TrackingError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    board = report.leaderboard.copy()
    board["run_id"] = board["run_id"].str[:8]
    print(f"== Leaderboard: {', '.join(report.sweeps['sweep'])} (search trials by best {args.metric}, {args.mode}; "
          "single trials on the search seeds) ==")
    print(printable(board).to_string())
    print("\n== Sweeps ==")
    print(printable(report.sweeps.drop(columns="parent_run_id")).to_string())
    for lines in report.results.values():
        print("\n" + "\n".join(lines))
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nReport in {report.out_dir}:")
    for path in report.files:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
