"""``python -m orchestrator.export``: a student as ONNX or TorchScript, with parity and latency.

The exported graph maps images (B, C, H, W), normalised as the training data,
to logits (B, num_classes); the batch size is free. Each export is checked
against PyTorch on a batch of real validation images (max abs logit
difference within ``tolerance``) and timed on this machine (ms/image at batch
1 and batch 64, median of repeats; ONNX through onnxruntime). With a
registered model version, both are tags of that version
(``export.<format>.max_abs_diff``, ``.tolerance``, ``.latency_ms_b1``,
``.latency_ms_b64``) and the files are artifacts of its run under ``export/``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from orchestrator.convert import LogitsOnly, to_onnx, to_torchscript
from orchestrator.safe_load import UnsafeFileError, load_tensors

FILES = {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}
BATCHES = (1, 64)


class ExportError(RuntimeError):
    """An export does not match PyTorch within tolerance, or its source cannot be found."""


def example_batch(data, n: int = 64) -> Tensor:
    """The first ``n`` validation images (n, C, H, W), normalised as in training."""
    return torch.stack([data.val[i][0] for i in range(min(n, len(data.val)))])


def predictor(fmt: str, path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function (B, C, H, W) float32 -> (B, K) logits running the exported file (ONNX with ``threads``
    intra-op threads and one inter-op thread when given; else ONNX Runtime's default)."""
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"images": x})[0]
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def latency_ms(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, repeats: int = 20,
               warmup: int = 10) -> float:
    """Median wall time per image (ms) of ``predict`` on ``batch`` images (tiled from ``images``), over
    ``repeats`` timed calls after ``warmup`` untimed ones."""
    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    for _ in range(warmup):  # TorchScript's profiling executor optimises after a few calls
        predict(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch


def export_one(model: nn.Module, fmt: str, images: Tensor, out_dir: Path) -> dict:
    """Write ``fmt``, check parity on ``images`` (N, C, H, W) and time it; raises ExportError on a mismatch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = (to_onnx if fmt == "onnx" else to_torchscript)(model, images, out_dir / FILES[fmt])
    with torch.no_grad():
        reference = LogitsOnly(model).cpu().eval()(images).numpy()
    predict = predictor(fmt, path)
    x = images.numpy().astype(np.float32)
    diff = float(np.abs(predict(x) - reference).max())
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
    result = {"path": str(path), "max_abs_diff": diff, "tolerance": tolerance,
              **{f"latency_ms_b{b}": latency_ms(predict, x, b) for b in BATCHES}}
    print(f"export {fmt}: {path}  parity: max |logit diff| {diff:.2e} on {len(x)} validation images "
          f"(tolerance {tolerance:.1e})  latency: {result['latency_ms_b1']:.3f} ms/image at batch 1, "
          f"{result['latency_ms_b64']:.4f} ms/image at batch 64 ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    if diff > tolerance:
        raise ExportError(f"{fmt} export differs from PyTorch by {diff:.3g} (> tolerance {tolerance:.3g})")
    return result


def export_student(model: nn.Module, data, formats: list[str], out_dir: Path, client=None,
                   registered_model: str | None = None, version: str | None = None) -> dict[str, dict]:
    """Export ``model`` to each of ``formats`` under ``out_dir`` (see the module doc); with a
    registered ``version``, tag it with parity and latency and log the files to its run."""
    images = example_batch(data)
    results = {fmt: export_one(model, fmt, images, Path(out_dir)) for fmt in formats}
    if client is not None and registered_model and version:
        tags = {f"export.{fmt}.{k}": f"{v:.6g}" for fmt, r in results.items() for k, v in r.items() if k != "path"}
        tags["export.machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        for key, value in tags.items():
            client.set_model_version_tag(registered_model, version, key, value)
        run_id = client.get_model_version(registered_model, version).run_id
        for r in results.values():
            client.log_artifact(run_id, r["path"], "export")
    return results


# ---------------------------------------------------------------- CLI


def _student_from_run(client, run_id: str) -> Path:
    """Download the student checkpoint of a run (``best_student.pt`` of a sweep, ``checkpoint/*.pt`` of a stage)."""
    candidates = [a.path for folder in (None, "checkpoint") for a in client.list_artifacts(run_id, folder)
                  if a.path.endswith(".pt")]
    if not candidates:
        raise ExportError(f"run {run_id} has no student checkpoint (best_student.pt or checkpoint/*.pt)")
    return Path(client.download_artifacts(run_id, candidates[0], tempfile.mkdtemp(prefix="distill-export-")))


def resolve_source(source: str, client) -> tuple[Path, str | None, str | None]:
    """(checkpoint file, registered model, version) of a file, run id, ``runs:/`` or ``models:/name/version``."""
    if Path(source).is_file():
        return Path(source), None, None
    if source.startswith("models:/"):
        name, _, version = source[len("models:/"):].partition("/")
        mv = client.get_model_version(name, version)
        return _student_from_run(client, mv.run_id), name, version
    run_id = source[len("runs:/"):].split("/")[0] if source.startswith("runs:/") else source
    versions = client.search_model_versions(f"run_id='{run_id}'")
    name, version = (versions[0].name, versions[0].version) if versions else (None, None)
    return _student_from_run(client, run_id), name, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="run id, runs:/<id>, models:/<name>/<version> or a student checkpoint file")
    parser.add_argument("--format", choices=sorted(FILES), default="onnx")
    parser.add_argument("--out", help=f"output file (default: ./export/{FILES['onnx']} or ./export/{FILES['torchscript']})")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("--data-root", help="where the student's dataset lives (default: the usual data root)")
    args = parser.parse_args(argv)

    from orchestrator import tracking
    from orchestrator.config import DataConfig
    from orchestrator.data import DatasetNotFoundError, build_data
    from orchestrator.teachers import TeacherCheckpointError, load_model_checkpoint

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    try:
        client = None if Path(args.source).is_file() else tracking.check_connection(uri)
        path, name, version = resolve_source(args.source, client)
        ckpt = load_tensors(path, "student checkpoint")
        model = load_model_checkpoint(path, ckpt["num_classes"], ckpt["in_channels"]).eval()
        data = build_data(DataConfig(dataset=ckpt["dataset"], root=args.data_root), 0)
    except (tracking.TrackingError, ExportError, TeacherCheckpointError, DatasetNotFoundError, UnsafeFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - an unknown run or version from MLflow
        print(f"error: cannot resolve '{args.source}': {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("export") / FILES[args.format]
    try:
        result = export_student(model, data, [args.format], out.parent, client, name, version)[args.format]
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if Path(result["path"]) != out:
        Path(result["path"]).replace(out)
    print(f"wrote {out}" + (f"; tags on {name} version {version}" if version else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
