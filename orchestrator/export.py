"""python -m orchestrator.export: A student as ONNX or TorchScript, self-describing, with parity and latency.

The exported graph maps images (B, C, H, W) to logits (B, num_classes); the
batch size is free. With ``include_preprocessing`` (the default, config key
``export.include_preprocessing``) the graph takes raw pixels scaled to [0, 1]
and normalises them itself, so a caller needs nothing but the file: the
default is on because the numbers to normalise with otherwise live only in
this package, and a model fed raw pixels without them scores at chance. Off,
it takes images normalised as the training data, ``(x - mean) / std``.

The file describes itself (ONNX ``metadata_props``; TorchScript extra file
``metadata.json``), all values strings: ``mean``, ``std`` (JSON lists, per
channel), ``input_size`` (JSON [C, H, W]), ``input_range`` ("[0, 1]"),
``channel_order`` ("L" grayscale or "RGB"), ``resize`` (how an image of another
size becomes H x W: ``data.resize``, see ``python -m orchestrator.predict``), ``layout`` ("NCHW"),
``preprocessing_in_graph`` ("true"/"false"), ``preprocessing`` (one sentence),
``class_names`` (JSON list), ``dataset``, ``student``, ``teacher`` and
``config`` (JSON of the run's flattened config, where known).

Each export is checked against PyTorch on a batch of real validation images
(max abs logit difference within ``tolerance``) and timed on this machine
(ms/image at batch 1 and batch 64, median of repeats; ONNX through
onnxruntime). It is written to a temporary file in the target folder and
renamed to exactly the target; nothing else there is created or replaced.
With a registered model version, parity and latency are tags of that version
(``export.<format>.max_abs_diff``, ``.tolerance``, ``.latency_ms_b1``,
``.latency_ms_b64``) and the files are artifacts of its run under ``export/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from orchestrator.deploy.runtime import latency_ms, predictor
from orchestrator.deploy.convert import LogitsOnly, Normalized, to_onnx, to_torchscript
from orchestrator.data.transforms import RESIZE_POLICIES
from orchestrator.infra.safe_load import CheckpointFileError, load_tensors

FILES = {"onnx": "student.onnx", "torchscript": "student.torchscript.pt"}
BATCHES = (1, 64)
RUN_ID = re.compile(r"[0-9a-f]{32}")


class ExportError(RuntimeError):
    """An export does not match PyTorch within tolerance, or its source or target is unusable."""


def example_batch(data, n: int = 64) -> Tensor:
    """The first ``n`` validation images (n, C, H, W), normalised as in training."""
    return torch.stack([data.val[i][0] for i in range(min(n, len(data.val)))])


def metadata(data, include_preprocessing: bool, provenance: dict[str, str] | None = None) -> dict[str, str]:
    """The self-description written into the file (see the module doc)."""
    c, h, w = example_batch(data, 1).shape[1:]
    mean, std = [round(float(m), 6) for m in data.mean], [round(float(s), 6) for s in data.std]
    how = ("float32 pixels scaled to [0, 1]; the graph normalises them" if include_preprocessing
           else f"float32 pixels scaled to [0, 1], then (x - mean) / std per channel with mean={mean}, std={std}")
    return {
        "mean": json.dumps(mean), "std": json.dumps(std), "input_size": json.dumps([int(c), int(h), int(w)]),
        "input_range": "[0, 1]", "channel_order": "RGB" if c == 3 else "L", "resize": data.resize, "layout": "NCHW",
        "preprocessing_in_graph": json.dumps(include_preprocessing),
        "preprocessing": f"input 'images' (B, {c}, {h}, {w}): {how}; an image of another size (S = {h}): {data.resize}, "
                         f"{RESIZE_POLICIES[data.resize]} (bilinear); output 'logits' (B, {data.num_classes})",
        "class_names": json.dumps(list(data.classes) or [str(i) for i in range(data.num_classes)]),
        "dataset": data.name, **(provenance or {}),
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_one(model: nn.Module, fmt: str, images: Tensor, path: Path, meta: dict[str, str], force: bool = False) -> dict:
    """Write ``fmt`` to exactly ``path`` (through a temporary file beside it), check parity on ``images``
    (N, C, H, W, normalised) and time it. With ``meta['preprocessing_in_graph']`` the file takes raw [0, 1]
    pixels. Raises ExportError on a mismatch, or when ``path`` exists and not ``force``; on any error
    ``path`` and its folder are as before."""
    path = Path(path)
    if path.exists() and not force:
        raise ExportError(f"'{path}' already exists; give --force to replace it, or another --out")
    in_graph = json.loads(meta["preprocessing_in_graph"])
    mean, std = (torch.tensor(json.loads(meta[k])).view(1, -1, 1, 1) for k in ("mean", "std"))
    graph, inputs = (Normalized(model, json.loads(meta["mean"]), json.loads(meta["std"])), images * std + mean) \
        if in_graph else (model, images)
    with torch.no_grad():
        reference = LogitsOnly(model).cpu().eval()(images).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        (to_onnx if fmt == "onnx" else to_torchscript)(graph, inputs, Path(tmp), meta)
        predict = predictor(fmt, Path(tmp))
        x = inputs.numpy().astype(np.float32)
        diff = float(np.abs(predict(x) - reference).max())
        tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
        if diff > tolerance:
            raise ExportError(f"{fmt} export differs from PyTorch by {diff:.3g} (> tolerance {tolerance:.3g}); "
                              f"'{path}' not written")
        result = {"path": str(path), "max_abs_diff": diff, "tolerance": tolerance,
                  **{f"latency_ms_b{b}": latency_ms(predict, x, b) for b in BATCHES}}
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would keep the file from the user's group and server
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    print(f"export {fmt}: {path}  parity: max |logit diff| {diff:.2e} on {len(x)} validation images "
          f"(tolerance {tolerance:.1e}; input: {'raw [0, 1] pixels' if in_graph else 'normalised pixels'})  "
          f"latency: {result['latency_ms_b1']:.3f} ms/image at batch 1, "
          f"{result['latency_ms_b64']:.4f} ms/image at batch 64 ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    return result


def config_provenance(cfg, teachers: list[str] | None = None) -> dict[str, str]:
    """``student``, ``teacher`` (``teachers`` joined with " + " when given, e.g. an ensemble's) and ``config``
    (flattened, JSON) of a run's Config, for :func:`metadata`."""
    from orchestrator.config.schema import flatten, to_dict

    teacher = " + ".join(teachers) if teachers else cfg.teacher.checkpoint or cfg.model.teacher
    return {"student": cfg.model.student, "teacher": teacher,
            "config": json.dumps(flatten(to_dict(cfg)), sort_keys=True, default=str)}


def tag_version(client, registered_model: str, version: str, results: dict[str, dict]) -> None:
    """Parity and latency as tags of the model version; the files as artifacts of its run under ``export/``."""
    tags = {f"export.{fmt}.{k}": f"{v:.6g}" for fmt, r in results.items() for k, v in r.items() if k != "path"}
    tags["export.machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    run_id = client.get_model_version(registered_model, version).run_id
    for r in results.values():
        client.log_artifact(run_id, r["path"], "export")


def export_student(model: nn.Module, data, formats: list[str], out_dir: Path, client=None,
                   registered_model: str | None = None, version: str | None = None, cfg=None,
                   teachers: list[str] | None = None) -> dict[str, dict]:
    """Export ``model`` to each of ``formats`` as ``out_dir/student.<ext>`` (this run's own folder: replaced if
    there), self-described from ``cfg`` (``export.include_preprocessing``, teacher or ``teachers``, config);
    with a registered ``version``, tag it with parity and latency and log the files to its run."""
    include = cfg.export.include_preprocessing if cfg is not None else True
    meta = metadata(data, include, config_provenance(cfg, teachers) if cfg is not None else None)
    images = example_batch(data)
    results = {fmt: export_one(model, fmt, images, Path(out_dir) / FILES[fmt], meta, force=True) for fmt in formats}
    if client is not None and registered_model and version:
        tag_version(client, registered_model, version, results)
    return results


# ---------------------------------------------------------------- CLI


def _student_from_run(client, run_id: str) -> Path:
    """Download the student checkpoint of a run (``best_student.pt`` of a sweep, ``checkpoint/*.pt`` of a stage)."""
    candidates = [a.path for folder in (None, "checkpoint") for a in client.list_artifacts(run_id, folder)
                  if a.path.endswith(".pt")]
    if not candidates:
        raise ExportError(f"run {run_id} has no student checkpoint (best_student.pt or checkpoint/*.pt)")
    return Path(client.download_artifacts(run_id, candidates[0], tempfile.mkdtemp(prefix="distill-export-")))


def is_mlflow_source(source: str) -> bool:
    """A ``runs:/``/``models:/`` URI or a bare 32-hex run id (anything else is a file path)."""
    return source.startswith(("runs:/", "models:/")) or RUN_ID.fullmatch(source) is not None


def resolve_source(source: str, client) -> tuple[Path, str | None, str | None, str | None]:
    """(checkpoint file, registered model, version, run id) of a file, run id, ``runs:/`` or ``models:/name/version``."""
    if not is_mlflow_source(source):
        return Path(source), None, None, None
    if source.startswith("models:/"):
        name, _, version = source[len("models:/"):].partition("/")
        mv = client.get_model_version(name, version)
        return _student_from_run(client, mv.run_id), name, version, mv.run_id
    run_id = source[len("runs:/"):].split("/")[0] if source.startswith("runs:/") else source
    versions = client.search_model_versions(f"run_id='{run_id}'")
    name, version = (versions[0].name, versions[0].version) if versions else (None, None)
    return _student_from_run(client, run_id), name, version, run_id


def run_provenance(client, run_id: str | None) -> dict[str, str]:
    """``teacher`` and ``config`` from the params of the run the checkpoint came from (empty for a file)."""
    if client is None or run_id is None:
        return {}
    params = client.get_run(run_id).data.params
    teacher = params.get("teacher.checkpoint") if params.get("teacher.checkpoint") not in (None, "None") else None
    return {"teacher": teacher or params.get("model.teacher", "unknown"), "mlflow_run": run_id,
            "config": json.dumps(params, sort_keys=True)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.export", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("source", help="a student checkpoint file, a run id, runs:/<id> or models:/<name>/<version>")
    parser.add_argument("--format", choices=sorted(FILES), default="onnx", help="the file format (default: %(default)s)")
    parser.add_argument("--out", help=f"the file to write (default: ./export/{FILES['onnx']} for onnx, "
                        f"./export/{FILES['torchscript']} for torchscript); nothing else is written")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.add_argument("--include-preprocessing", action=argparse.BooleanOptionalAction, default=True,
                        help="the graph takes raw [0, 1] pixels and normalises them itself (default: on; off: it takes "
                        "normalised pixels, and the metadata names mean and std)")
    parser.add_argument("--arch", help="the architecture of a plain state_dict, e.g. tiny_student "
                        "(required for one; this tool's checkpoints name their own)")
    parser.add_argument("--dataset", default="fashion_mnist",
                        help="the dataset a plain state_dict was trained on (default: %(default)s; this tool's "
                        "checkpoints name their own)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI, for a run or model source "
                        "(default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("--data-root", help="where the student's dataset lives (default: the usual data root; "
                        "for an image folder: the folder holding train/ and test/, as data.root)")
    parser.add_argument("--dry-run", action="store_true", help="check the source, the tracking store and --out, "
                        "say what would be written; write nothing")
    return parser


def _load_student(path: Path, args):
    """(model, data) of this tool's checkpoint, or of a plain state_dict with ``--arch``/``--dataset``."""
    from orchestrator.config.schema import DataConfig
    from orchestrator.data import build_data
    from orchestrator.models.weights import load_weights
    from orchestrator.teacher.checkpoint import load_model_checkpoint, plain_state_dict

    ckpt = load_tensors(path, "student checkpoint")
    weights = plain_state_dict(ckpt)
    if weights is not None:
        if not args.arch:
            raise ExportError(f"'{path}' is a plain state_dict; give --arch <its architecture> "
                              f"(and --dataset if it is not {args.dataset})")
        data = build_data(DataConfig(dataset=args.dataset, root=args.data_root), 0)
        try:
            return load_weights(args.arch, weights, data.num_classes, data.in_channels).eval(), data, args.arch
        except ValueError as exc:
            raise ExportError(f"'{path}' does not fit --arch {args.arch} on {args.dataset}: {exc}") from exc
    if not (isinstance(ckpt, dict) and {"arch", "state_dict", "num_classes", "in_channels", "dataset"} <= set(ckpt)):
        raise ExportError(f"'{path}' is a PyTorch file but not a student checkpoint (no 'arch'/'state_dict'); "
                          "give this tool's checkpoint, or a plain state_dict with --arch")
    model = load_model_checkpoint(path, ckpt["num_classes"], ckpt["in_channels"]).eval()
    geometry = {k: ckpt[k] for k in ("image_size", "resize") if ckpt.get(k) is not None}  # as it was trained
    return model, build_data(DataConfig(dataset=ckpt["dataset"], root=args.data_root, **geometry), 0), ckpt["arch"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out) if args.out else Path("export") / FILES[args.format]
    from orchestrator.run.preflight import creatable

    unwritable = None if out.exists() else creatable(out)
    if out.is_dir() or (out.exists() and not args.force) or unwritable:
        why = "is a folder" if out.is_dir() else f"cannot be written: {unwritable}" if unwritable else \
            "already exists; give --force to replace it"
        print(f"error: --out '{out}' {why}", file=sys.stderr)
        return 2

    from orchestrator.infra import tracking
    from orchestrator.data import DatasetNotFoundError
    from orchestrator.infra.dry_run import writing_nothing
    from orchestrator.teacher.checkpoint import TeacherCheckpointError

    try:
        client = None
        if not is_mlflow_source(args.source):
            if not Path(args.source).is_file():
                raise ExportError(f"no such file: '{args.source}' (give a student checkpoint file, a run id, "
                                  "runs:/<id> or models:/<name>/<version>)")
        else:
            uri = tracking.resolve_tracking_uri(args.tracking_uri)
            store = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
            if store and not Path(store).is_file():
                raise ExportError(f"no MLflow store at '{store}' to find '{args.source}' in; give --tracking-uri")
            client = tracking.check_connection(uri)
        path, name, version, run_id = resolve_source(args.source, client)
        with writing_nothing(args.dry_run):
            model, data, arch = _load_student(path, args)
        meta = metadata(data, args.include_preprocessing, {"student": arch, **run_provenance(client, run_id)})
    except (tracking.TrackingError, ExportError, TeacherCheckpointError, DatasetNotFoundError,
            CheckpointFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - an unknown run or version from MLflow
        print(f"error: cannot resolve '{args.source}': {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        how = "raw [0, 1] pixels, normalised in the graph" if args.include_preprocessing else "normalised pixels"
        print(f"would write {out} ({args.format}, {arch}, takes {how}; checked against PyTorch on "
              f"{len(example_batch(data))} validation images)" + (f"; tags on {name} version {version}" if version else ""))
        print("dry run: nothing was written")
        return 0
    try:
        result = export_one(model, args.format, example_batch(data), out, meta, force=args.force)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if client is not None and name and version:
        tag_version(client, name, version, {args.format: result})
    print(f"wrote {out}" + (f"; tags on {name} version {version}" if version else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
