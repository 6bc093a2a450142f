"""What moving a sweep's trial inputs through a storage URI costs: the driver's upload (once per sweep), a node's
first download (once per node) and a later read (its cache), through :mod:`orchestrator.infra.storage` against moto's S3
server on 127.0.0.1 (a real S3 adds the network; this measures the tool's side). ``--journal-kib``: what each save
of Tune's state adds on such a storage, the upload of the sweep folder's changed resume files
(:mod:`orchestrator.sweep.driver_copy`: an Optuna journal of that size), and the check when nothing changed.

    python benchmarks/storage_inputs.py FILE_OR_FOLDER [...]    # e.g. the teacher and its output cache
    python benchmarks/storage_inputs.py --journal-kib 225 2300  # the journal at about 100 and 1,000 trials
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_bucket():
    """moto's S3 server on 127.0.0.1 with the bucket ``bench``, its endpoint and credentials in the environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = dict(os.environ)
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        boto3.client("s3").create_bucket(Bucket="bench")
        yield
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


def measure(paths: list[str]) -> dict[str, float]:
    """MiB of ``paths`` and seconds of: upload, a node's first fetch, a cached fetch."""
    from orchestrator.infra import storage

    with s3_bucket(), tempfile.TemporaryDirectory() as cache:
        os.environ["DISTILL_CACHE_DIR"] = cache  # a node that has fetched nothing yet
        uris, upload_s, size = storage.publish_timed(paths, "s3://bench/runs/sweep/inputs")
        start = time.perf_counter()
        storage.fetch_under(uris, "s3://bench/runs/sweep/inputs")
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        storage.fetch_under(uris, "s3://bench/runs/sweep/inputs")
        cached_s = time.perf_counter() - start
    return {"mib": size / 2**20, "upload_s": upload_s, "first_fetch_s": first_s, "cached_fetch_s": cached_s}


def measure_driver_copy(kib: int, repeats: int = 7) -> dict[str, float]:
    """Median seconds (first of ``repeats`` left out) of uploading a changed ``kib`` KiB journal, and of an upload
    that finds nothing changed."""
    from orchestrator.sweep import driver_copy
    from orchestrator.sweep.folder import OPTUNA_JOURNAL

    times = []
    with s3_bucket(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "runs" / f"sweep-{kib}"
        folder.mkdir(parents=True)
        for _ in range(repeats):
            (folder / OPTUNA_JOURNAL).write_bytes(os.urandom(kib * 1024))
            start = time.perf_counter()
            driver_copy.upload(folder, "s3://bench/runs")
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        driver_copy.upload(folder, "s3://bench/runs")
        unchanged = time.perf_counter() - start
    return {"changed_s": statistics.median(times[1:]), "unchanged_s": unchanged}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", help="files or folders a sweep's trials read (teacher, output caches)")
    parser.add_argument("--journal-kib", type=int, nargs="*", default=[], help="journal sizes to time the copy of")
    args = parser.parse_args(argv)
    if not args.paths and not args.journal_kib:
        parser.error("give FILE_OR_FOLDER paths, --journal-kib sizes, or both")
    if args.paths:
        r = measure(args.paths)
        print(f"{r['mib']:.1f} MiB: upload {r['upload_s']:.2f} s (once per sweep), first fetch on a node "
              f"{r['first_fetch_s']:.2f} s (once per node), cached {r['cached_fetch_s'] * 1000:.1f} ms (every trial)")
    for kib in args.journal_kib:
        r = measure_driver_copy(kib)
        print(f"sweep folder copy at a Tune save, journal {kib} KiB: {r['changed_s']:.3f} s (median of 6); "
              f"nothing changed: {r['unchanged_s'] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
