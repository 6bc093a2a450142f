"""Provision Fashion-MNIST (the default dataset) without surprises.

``ensure_fashion_mnist(root)`` makes ``<root>/FashionMNIST/raw/`` hold the four
decompressed IDX files that ``torchvision.datasets.FashionMNIST(root,
download=False)`` reads. In order it tries:

1. the files are already there (nothing to do);
2. the ``.gz`` IDX files were dropped into ``<root>/FashionMNIST/raw/`` by hand:
   decompress them in place;
3. the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
   or ``$DISTILL_FASHION_MNIST_SYSTEM_DIR``): copy + decompress;
4. torchvision's download (internet), unless ``$DISTILL_OFFLINE`` is set;

and otherwise raises :class:`DatasetNotFoundError` saying how to get the files.
Files are written to a temporary name and renamed, so several processes (Ray
workers) provisioning at once never see a half-written file.

Command line (the Makefile runs it after trying ``apt-get``)::

    python -m orchestrator.data.provision [--root DIR]
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import os
import shutil
import sys
import tempfile
from pathlib import Path

from orchestrator.infra import dry_run
from orchestrator.data.common import DatasetNotFoundError, default_data_root

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_DIR_ENV = "DISTILL_FASHION_MNIST_SYSTEM_DIR"
OFFLINE_ENV = "DISTILL_OFFLINE"


def fashion_mnist_raw_dir(root: Path) -> Path:
    """Where torchvision's FashionMNIST looks for the IDX files."""
    return Path(root) / "FashionMNIST" / "raw"


def _have_all(raw: Path) -> bool:
    return all((raw / name).is_file() and (raw / name).stat().st_size > 0 for name in FASHION_MNIST_FILES)


def _decompress_into(src_dir: Path, raw: Path) -> bool:
    """Decompress ``src_dir/<name>.gz`` into ``raw/<name>`` for every missing file.

    Returns True when all four files are then present."""
    if not all((src_dir / f"{name}.gz").is_file() or (raw / name).is_file() for name in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if target.is_file() and target.stat().st_size > 0:
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a shared data root must stay readable
            with gzip.open(src_dir / f"{name}.gz", "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return _have_all(raw)


def _try_download(root: Path) -> str | None:
    """torchvision's download; returns None on success, else why it failed."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def how_to_get_fashion_mnist(root: Path) -> str:
    raw = fashion_mnist_raw_dir(root)
    gz_names = ", ".join(n + ".gz" for n in FASHION_MNIST_FILES)
    return (
        "either (a) `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs the IDX files in "
        f"{SYSTEM_DIR}) then rerun or run `python -m orchestrator.data.provision --root {root}`; "
        f"or (b) put the four IDX files ({gz_names}, gzipped or not) in {raw}/; "
        f"or (c) allow internet access (and unset ${OFFLINE_ENV}) so torchvision can download them; "
        f"or point data.root / $DISTILL_DATA_ROOT at a directory that already holds FashionMNIST/raw/."
    )


def ensure_fashion_mnist(
    root: Path | str | None = None, *, system_dir: Path | str | None = None, download: bool | None = None
) -> Path:
    """Make Fashion-MNIST readable offline under ``root``; return ``root``.

    ``root`` is the directory to pass to ``torchvision.datasets.FashionMNIST``
    (the files end up in ``root/FashionMNIST/raw/``); None means
    :func:`default_data_root`. ``system_dir`` overrides the Debian package's
    directory; ``download=None`` means "download unless $DISTILL_OFFLINE is set".
    """
    root = Path(root).expanduser().resolve() if root else default_data_root().resolve()
    raw = fashion_mnist_raw_dir(root)
    if _have_all(raw):
        return root
    if dry_run.active():
        return _temporary_copy(root, system_dir, download)
    tried = [str(raw)]
    try:  # .gz files dropped in by hand (or left by an interrupted download)
        if _decompress_into(raw, raw):
            return root
    except (OSError, EOFError):
        pass
    sysdir = Path(system_dir if system_dir is not None else os.environ.get(SYSTEM_DIR_ENV) or SYSTEM_DIR)
    tried.append(str(sysdir))
    if sysdir.is_dir() and _decompress_into(sysdir, raw):
        return root
    if download is None:
        download = not os.environ.get(OFFLINE_ENV)
    failure = f"not tried (${OFFLINE_ENV} is set or download=False)"
    if download:
        failure = _try_download(root)
        if failure is None and _have_all(raw):
            return root
        tried.append("torchvision download")
    raise DatasetNotFoundError(
        "fashion_mnist", tried, how_to_get_fashion_mnist(root) + f" (torchvision download: {failure or 'no files'})"
    )


def _temporary_copy(root: Path, system_dir: Path | str | None, download: bool | None) -> Path:
    """Fashion-MNIST provisioned into a temporary folder (removed at exit) for a dry run; ``root`` is untouched."""
    temporary = Path(tempfile.mkdtemp(prefix="distill-dry-run-data-"))
    atexit.register(shutil.rmtree, temporary, True)
    try:  # .gz files dropped in by hand
        _decompress_into(fashion_mnist_raw_dir(root), fashion_mnist_raw_dir(temporary))
    except (OSError, EOFError):
        pass
    with dry_run.writing_nothing(False):  # into the temporary folder
        ensure_fashion_mnist(temporary, system_dir=system_dir, download=download)
    print(f"dry run: Fashion-MNIST is not provisioned under {root}; the run provisions it there "
          "(this dry run read a temporary copy)")
    return temporary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.data.provision",
        description="Provision Fashion-MNIST for offline use (Debian package, local .gz files or download).",
    )
    parser.add_argument(
        "--root", default=None, help="data root (default: $DISTILL_DATA_ROOT or ~/.cache/distill-orchestrator/data)"
    )
    parser.add_argument("--no-download", action="store_true", help="never try the internet")
    args = parser.parse_args(argv)
    try:
        root = ensure_fashion_mnist(args.root, download=False if args.no_download else None)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST ready: {fashion_mnist_raw_dir(root)} (use data.root={root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
