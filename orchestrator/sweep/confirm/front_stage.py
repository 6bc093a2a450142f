"""Publishing the confirmed front (:mod:`orchestrator.sweep.confirm.front`): per point an MLflow child run (kind ``front``)
with its numbers and tags, its student exported to ONNX (parity checked) into ``<sweep>/front/``, and a
registered model version tagged with its cost and accuracy; the parent run gets every point's numbers
(``front/<i>/...``), the reference rows (the teacher; or the ensemble and its teachers) and ``front.png``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.cost_metrics import METRICS
from orchestrator.config.schema import Config, apply_overrides
from orchestrator.data import DataBundle
from orchestrator.deploy.cost import cost_metrics, model_cost, student_cost
from orchestrator.export import config_provenance, example_batch, export_one, metadata
from orchestrator.infra import storage, tracking
from orchestrator.infra.atomic_files import write_json_atomic
from orchestrator.infra.safe_load import load_tensors
from orchestrator.models import describe_model
from orchestrator.report.plots import plot_front, slug
from orchestrator.run.worker import STUDENT_FILE
from orchestrator.sweep.confirm import front, outcome
from orchestrator.teacher.checkpoint import load_model_checkpoint, load_teacher


def teacher_row(source: str, label: str, test_acc1: float, cfg: Config, data: DataBundle) -> dict[str, Any]:
    """A reference row of the front: ``teacher <label>``, its ``test_acc1`` and its ``cost/*`` metrics: for a
    checkpoint file of this tool (it names its architecture) measured like a student's (cached); for any other
    teacher (TorchScript, an MLflow URI) measured on the loaded model now; a teacher that cannot be exported
    keeps its accuracy only (said on stderr)."""
    row: dict[str, Any] = {"label": f"teacher {label}", "test_acc1": test_acc1}
    try:
        ckpt = load_tensors(source, "teacher checkpoint") if Path(source).is_file() else None
    except Exception:  # noqa: BLE001 - a TorchScript or foreign file: measured on the loaded model below
        ckpt = None
    threads = cfg.export.latency_threads
    if isinstance(ckpt, dict) and isinstance(ckpt.get("arch"), str):
        cost = student_cost(ckpt["arch"], data.num_classes, data.in_channels, data.image_size, threads)
        return {**row, "arch": ckpt["arch"], **cost_metrics(cost)}
    try:
        model = load_teacher(source, data.num_classes, data.in_channels, data.image_size)
        inner = getattr(model, "module", model)
        row["arch"] = "TorchScript" if isinstance(inner, torch.jit.ScriptModule) else type(inner).__name__
        return {**row, **cost_metrics(model_cost(model, data.in_channels, data.image_size, threads))}
    except Exception as exc:  # noqa: BLE001 - a reference row must not fail a finished sweep
        problem = exc
    try:  # e.g. a TorchScript module the ONNX exporter cannot trace: its size without its latency
        size = describe_model(model, data.in_channels, data.image_size)
        row.update({METRICS["params"]: float(size["params"]), METRICS["macs"]: float(size["macs"])})
    except Exception:  # noqa: BLE001
        pass
    print(f"warning: the latency of teacher {label} was not measured ({problem})", file=sys.stderr)
    return row


def ensemble_row(teachers: list[dict[str, Any]], test_acc1: float) -> dict[str, Any]:
    """The ensemble's reference row from its teachers' rows (:func:`teacher_row`): its ``test_acc1`` and, as
    cost, the sum of theirs (every teacher runs on each image: parameters, MACs, and the latencies as run one
    after the other); a cost metric some teacher lacks is left out."""
    row: dict[str, Any] = {"label": f"ensemble of {len(teachers)} (mean softmax)", "test_acc1": test_acc1}
    for key in front.COSTS:
        if all(key in t for t in teachers):
            row[key] = float(sum(t[key] for t in teachers))
    return row


FRONT_FILE = "front.json"  # the published front's summary section, written last: a resumed sweep reuses it


def published(exp_dir: Path) -> dict | None:
    """The front this sweep folder already published (its ``summary.json`` section), or None."""
    path = exp_dir / FRONT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def publish(client, parent_id: str, cfg: Config, fixed: Mapping[str, Any], data: DataBundle, verdict: outcome.Verdict,
            spec: front.FrontSpec, cost_of: Callable[[dict], Mapping[str, Any]], references: list[dict[str, Any]],
            chosen_version: str | None, exp_dir: Path) -> tuple[list[front.FrontPoint], dict]:
    """Export, log and register every confirmed point of ``verdict`` (the chosen one is already registered as
    ``chosen_version``: it is tagged, not registered again); draw ``front.png``. ``fixed``: the search space's
    constants; ``cost_of``: sampled params -> the student's cost record; ``references``: the reference rows,
    the teacher (or the ensemble) first. Returns the points and the ``summary.json`` section."""
    points = front.confirmed_points(verdict.cands, spec, cost_of, cfg.sweep.confirm.level)
    experiment_id = client.get_run(parent_id).info.experiment_id
    metrics = {f"front/teacher/{k}": v for k, v in references[0].items() if isinstance(v, float)}
    metrics.update({f"front/reference/{i}/{k}": v for i, ref in enumerate(references[1:], 1)
                    for k, v in ref.items() if isinstance(v, float)})
    rows, tags = [], {f"front.reference.{i}": ref["label"] for i, ref in enumerate(references)}
    for i, p in enumerate(points, 1):
        extra = _publish_point(client, parent_id, experiment_id, i, p, cfg, fixed, data, p.cand is verdict.chosen,
                               chosen_version, exp_dir)
        rows.append(p.summary(extra))
        metrics.update({f"front/{i}/{k}": v for k, v in p.metrics().items()})
        tags.update({f"front.{i}.arch": p.arch, f"front.{i}.config": p.cand.label,
                     f"front.{i}.significant": p.tags().get("gain_vs_alone_significant", "n/a")})
    plot = plot_front(points, references, verdict.seeds, exp_dir / "front.png",
                      f"the most accurate student within {spec.budget}" if spec.budget
                      else f"the front over {spec.accuracy} ({spec.accuracy_mode}) and {spec.cost} (min)",
                      spec.budget.limit if spec.budget and spec.budget.metric == "cost/latency_ms" else None)
    tracking.log_metrics(client, parent_id, metrics, step=0)
    tracking.set_tags(client, parent_id, {"front.points": str(len(points)), **tags})
    tracking.log_file(client, parent_id, plot)
    section = {"objectives": spec.objectives, "budget": str(spec.budget) if spec.budget else None,
               "seeds": verdict.seeds, "teacher": references[0], "references": references, "points": rows,
               "plot": str(plot)}
    write_json_atomic(exp_dir / FRONT_FILE, json.loads(json.dumps(section, default=str)))
    return points, section


def _publish_point(client, parent_id: str, experiment_id: str, i: int, p: front.FrontPoint, cfg: Config,
                   fixed: Mapping[str, Any], data: DataBundle, chosen: bool, version: str | None, exp_dir: Path) -> dict:
    """Point ``i``: its child run, its best-on-validation seed's student as ONNX, its registered version
    (``chosen``: registered already, as ``version``)."""
    seed = outcome.best_seed(p.cand)
    checkpoint = storage.local_copy(p.cand.checkpoints[seed], cfg.sweep.storage_path, exp_dir / "checkpoints")
    student = load_model_checkpoint(checkpoint / STUDENT_FILE, data.num_classes, data.in_channels)
    point_cfg = apply_overrides(cfg, {**fixed, **p.cand.params})
    meta = metadata(data, cfg.export.include_preprocessing, config_provenance(point_cfg))
    tags = {"front_point": str(i), **p.tags(), "seed": str(seed)}
    run_id = tracking.start_run(client, experiment_id, f"front {i}: {p.arch}", "front", parent_id=parent_id, tags=tags)
    with tracking.run_scope(client, run_id):
        tracking.log_metrics(client, run_id, p.metrics(), step=0)
        onnx = export_one(student, "onnx", example_batch(data), exp_dir / "front" / f"{i}-{slug(p.arch)}.onnx", meta,
                          force=True)
        tracking.log_file(client, run_id, onnx["path"], "export")
        registered = cfg.tracking.registered_model
        if not chosen:
            version = tracking.log_model(run_id, student, "student", registered, example=example_batch(data),
                                         metadata=meta)
        if version:
            tracking.tag_model_version(client, registered, version,
                                       {**tags, "export.onnx.max_abs_diff": f"{onnx['max_abs_diff']:.3g}"})
            tracking.set_tags(client, run_id, {"registered_version": version})
    return {"seed": seed, "onnx": onnx["path"], "onnx_max_abs_diff": onnx["max_abs_diff"], "run_id": run_id,
            "registered_version": version}
