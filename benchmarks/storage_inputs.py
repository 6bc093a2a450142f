"""What moving a sweep's trial inputs through a storage URI costs: the driver's upload (once per sweep), a node's
first download (once per node) and a later read (its cache), through :mod:`orchestrator.infra.storage` against moto's S3
server on 127.0.0.1 (a real S3 adds the network; this measures the tool's side).

    python benchmarks/storage_inputs.py FILE_OR_FOLDER [...]    # e.g. the teacher and its output cache
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(paths: list[str]) -> dict[str, float]:
    """MiB of ``paths`` and seconds of: upload, a node's first fetch, a cached fetch."""
    import boto3
    from moto.server import ThreadedMotoServer

    from orchestrator.infra import storage
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = dict(os.environ)
    try:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        boto3.client("s3").create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as cache:
            os.environ["DISTILL_CACHE_DIR"] = cache  # a node that has fetched nothing yet
            uris, upload_s, size = storage.publish_timed(paths, "s3://bench/runs/sweep/inputs")
            start = time.perf_counter()
            storage.fetch_under(uris, "s3://bench/runs/sweep/inputs")
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            storage.fetch_under(uris, "s3://bench/runs/sweep/inputs")
            cached_s = time.perf_counter() - start
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
    return {"mib": size / 2**20, "upload_s": upload_s, "first_fetch_s": first_s, "cached_fetch_s": cached_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="files or folders a sweep's trials read (teacher, output caches)")
    args = parser.parse_args(argv)
    r = measure(args.paths)
    print(f"{r['mib']:.1f} MiB: upload {r['upload_s']:.2f} s (once per sweep), first fetch on a node "
          f"{r['first_fetch_s']:.2f} s (once per node), cached {r['cached_fetch_s'] * 1000:.1f} ms (every trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
