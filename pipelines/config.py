"""Configuration of the ensemble pipeline: the sweep's :class:`~orchestrator.config.Config` plus a ``pipeline`` section.

One YAML file (or none) and ``key.sub=value`` overrides, like the sweep::

    name: fmnist-ensemble          # every orchestrator key works here: data.*, train.*, distill.*, ...
    model: {student: cnn_student_tiny}
    distill: {method: kd}          # the values of the single distillation run (without --sweep)
    pipeline:
      teachers:                    # M teachers: trained (arch, seed, epochs, lr) or given (checkpoint)
        - {arch: cnn_teacher, seed: 0}
        - {arch: cnn_teacher, seed: 1}
        - {arch: cnn_teacher_wide, seed: 2, epochs: 4}
        - {checkpoint: runs:/<run id>/teacher}   # or a checkpoint file
        - {checkpoint: resnet18.pt, arch: tv_resnet18}   # a plain state_dict of that model
      sweep: false                 # true: search sweep.search_space (default search_spaces/ensemble.yaml)

Overrides reach list items by position (``pipeline.teachers.2.epochs=3``) or
replace the list (``pipeline.teachers=[cnn_teacher, cnn_teacher:1]``; a string
item is ``arch`` or ``arch:seed``, anything else a checkpoint path / MLflow URI).
A teacher's ``epochs`` / ``lr`` default to ``teacher.epochs`` / ``teacher.lr``.

Teachers and their outputs are shared with the sweep's caches; the data split is
always seeded by ``seed`` (a teacher's own ``seed`` only changes its
initialisation and batch order), so no teacher ever sees the validation images.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import Config, ConfigError, coerce, from_dict, layer_tree, to_dict
from orchestrator.distill import registry
from orchestrator.models import model_names

# Pipeline defaults on top of the orchestrator's (KD is the cheap, strong default for
# an ensemble: with cached teacher outputs it costs almost nothing per step).
BASE_DEFAULTS: dict[str, Any] = {
    "name": "fmnist-ensemble",
    "distill.method": "kd",
    "distill.kd.temperature": 4.0,
    "train.epochs": 15,
    "teacher.epochs": 3,
    "sweep.search_space": "ensemble",
    "sweep.num_samples": 6,
    "sweep.baseline": False,  # the pipeline trains the student alone as a stage of its own
}
SHORT_TEACHER = re.compile(r"^(?P<arch>[A-Za-z_][\w]*)(?::(?P<seed>\d+))?$")


@dataclass
class TeacherSpec:
    """One ensemble member: trained here (arch/seed/epochs/lr) or given (checkpoint path or MLflow URI;
    ``arch``: the model a plain state_dict checkpoint was saved from)."""

    arch: str | None = "cnn_teacher"
    seed: int | None = None  # None -> the pipeline seed + the teacher's position
    epochs: int | None = None  # None -> teacher.epochs
    lr: float | None = None  # None -> teacher.lr
    checkpoint: str | None = None


@dataclass
class PipelineSection:
    teachers: list[TeacherSpec] = field(
        default_factory=lambda: [
            TeacherSpec("cnn_teacher", seed=0),
            TeacherSpec("cnn_teacher", seed=1),
            TeacherSpec("cnn_teacher_wide", seed=2),
        ]
    )
    sweep: bool = False  # distil the ensemble with a sweep over sweep.search_space instead of one run
    output_dir: str | None = None  # None -> ./runs/<name>-pipeline (stage results, students, comparison)
    inference_batch: int = 256  # batch size of the inference-time measurement
    timing_repeats: int = 10  # timed batches per model (median reported)


@dataclass
class ResolvedTeacher:
    """A teacher with every default filled in."""

    index: int
    name: str  # e.g. "t0-cnn_teacher-s0"
    arch: str | None
    seed: int
    epochs: int
    lr: float
    checkpoint: str | None
    state_dict_arch: str | None = None  # a given checkpoint that is a plain state_dict is imported as this model


@dataclass
class PipelineConfig:
    base: Config
    pipeline: PipelineSection

    @property
    def teachers(self) -> list[ResolvedTeacher]:
        out = []
        for i, spec in enumerate(self.pipeline.teachers):
            seed = self.base.seed + i if spec.seed is None else spec.seed
            epochs = spec.epochs or self.base.teacher.epochs
            lr = spec.lr or self.base.teacher.lr
            if spec.checkpoint:
                is_uri = ":/" in spec.checkpoint
                name = f"t{i}-" + ("mlflow" if is_uri else Path(spec.checkpoint).stem)
            else:
                name = f"t{i}-{spec.arch}-s{seed}"
            arch, given_arch = (None, spec.arch) if spec.checkpoint else (spec.arch, None)
            out.append(ResolvedTeacher(i, name, arch, seed, epochs, lr, spec.checkpoint, given_arch))
        return out

    @property
    def output_dir(self) -> Path:
        return Path(self.pipeline.output_dir or Path("runs") / f"{self.base.name}-pipeline").resolve()

    def to_tree(self) -> dict:
        return {**to_dict(self.base), "pipeline": asdict(self.pipeline)}

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.to_tree(), sort_keys=False)


# ---------------------------------------------------------------- loading


def default_tree() -> dict:
    tree = to_dict(Config())
    for dotted, value in BASE_DEFAULTS.items():
        _set(tree, dotted, value)
    tree["pipeline"] = asdict(PipelineSection())
    return tree


def load_pipeline_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Pipeline defaults <- YAML file <- ``key.sub=value`` overrides, validated (ConfigError names the key)."""
    tree = layer_tree(default_tree(), path, overrides, lambda t, key, raw: _set(t, key, raw, parse=True))
    return from_tree(tree)


def from_tree(tree: dict) -> PipelineConfig:
    tree = copy.deepcopy(tree)
    section = tree.pop("pipeline", None) or {}
    base = from_dict(tree)  # the orchestrator's own validation (names the key)
    pipeline = _parse_section(section)
    cfg = PipelineConfig(base, pipeline)
    validate(cfg)
    return cfg


def _parse_section(raw: Any) -> PipelineSection:
    if not isinstance(raw, dict):
        raise ConfigError("pipeline", raw, "a mapping")
    known = {"teachers", "sweep", "output_dir", "inference_batch", "timing_repeats"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"pipeline.{unknown[0]}", raw[unknown[0]], f"known keys here are {sorted(known)}")
    out = PipelineSection()
    if "teachers" in raw:
        out.teachers = _parse_teachers(raw["teachers"])
    if "sweep" in raw:
        out.sweep = coerce("pipeline.sweep", raw["sweep"], bool)
    if "output_dir" in raw:
        out.output_dir = None if raw["output_dir"] in (None, "", "null") else str(raw["output_dir"])
    for key in ("inference_batch", "timing_repeats"):
        if key in raw:
            setattr(out, key, coerce(f"pipeline.{key}", raw[key], int))
    return out


def _parse_teachers(raw: Any) -> list[TeacherSpec]:
    if isinstance(raw, str):
        raw = yaml.safe_load(raw)
    if isinstance(raw, dict) and raw and all(str(k).isdigit() for k in raw):  # built by index overrides
        raw = [raw[k] for k in sorted(raw, key=int)]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("pipeline.teachers", raw, "a non-empty list of teachers ({arch, seed, epochs, lr} or {checkpoint})")
    specs = []
    for i, item in enumerate(raw):
        key = f"pipeline.teachers.{i}"
        if isinstance(item, str):
            match = SHORT_TEACHER.match(item)
            if match:
                seed = match.group("seed")
                specs.append(TeacherSpec(match.group("arch"), seed=None if seed is None else int(seed)))
            else:
                specs.append(TeacherSpec(None, checkpoint=item))
            continue
        if not isinstance(item, dict):
            raise ConfigError(key, item, "a mapping {arch, seed, epochs, lr} or {checkpoint}, or a string 'arch[:seed]'")
        allowed = {"arch", "seed", "epochs", "lr", "checkpoint"}
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}", item[unknown[0]], f"known keys here are {sorted(allowed)}")
        checkpoint = item.get("checkpoint")
        checkpoint = None if checkpoint in (None, "", "null") else coerce(f"{key}.checkpoint", checkpoint, str)
        arch = item.get("arch", None if checkpoint else "cnn_teacher")
        specs.append(
            TeacherSpec(
                arch=None if arch in (None, "null") else coerce(f"{key}.arch", arch, str),
                seed=coerce(f"{key}.seed", item.get("seed"), int | None),
                epochs=coerce(f"{key}.epochs", item.get("epochs"), int | None),
                lr=coerce(f"{key}.lr", item.get("lr"), float | None),
                checkpoint=checkpoint,
            )
        )
    return specs


def _allowed_models(known: list[str]) -> str:
    own = [n for n in known if not n.startswith("tv_")]
    return f"one of {own} or a torchvision model tv_<name>"


def validate(cfg: PipelineConfig) -> None:
    known = model_names()
    base, section = cfg.base, cfg.pipeline
    if base.model.student not in known:
        raise ConfigError("model.student", base.model.student, _allowed_models(known))
    if base.teacher.weights:
        raise ConfigError("teacher.weights", base.teacher.weights, "null: the pipeline trains its teachers from scratch "
                          "(give pretrained or fine-tuned teachers as pipeline.teachers.<i>.checkpoint)")
    for i, spec in enumerate(section.teachers):
        key = f"pipeline.teachers.{i}"
        if spec.checkpoint:
            continue
        if spec.arch not in known:
            raise ConfigError(f"{key}.arch", spec.arch, _allowed_models(known) + f" (or give {key}.checkpoint)")
        if spec.epochs is not None and spec.epochs <= 0:
            raise ConfigError(f"{key}.epochs", spec.epochs, "an integer > 0")
        if spec.lr is not None and spec.lr <= 0:
            raise ConfigError(f"{key}.lr", spec.lr, "a number > 0")
        if spec.seed is not None and spec.seed < 0:
            raise ConfigError(f"{key}.seed", spec.seed, "an integer >= 0")
    if section.inference_batch <= 0:
        raise ConfigError("pipeline.inference_batch", section.inference_batch, "an integer > 0")
    if section.timing_repeats <= 0:
        raise ConfigError("pipeline.timing_repeats", section.timing_repeats, "an integer > 0")
    problem = registry.supports_teachers(base.distill, len(section.teachers))
    if problem:
        raise ConfigError("distill.method", base.distill.method, problem)
    names = [t.name for t in cfg.teachers]
    trained = [(t.arch, t.seed, t.epochs, t.lr) for t in cfg.teachers if not t.checkpoint]
    if len(set(trained)) != len(trained):
        raise ConfigError("pipeline.teachers", names, "distinct teachers (give each copy of an arch its own seed)")


# ---------------------------------------------------------------- dotted keys


def _set(tree: dict, dotted: str, value: Any, parse: bool = False) -> None:
    """Set ``a.b.c`` in a nested tree; ``pipeline.teachers.<i>.<key>`` reaches list items."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: depth + 1]), value)
            continue
        child = node.setdefault(part, {})
        if isinstance(child, str) and parts[: depth + 1] == ["pipeline", "teachers"]:
            child = node[part] = yaml.safe_load(child)
        if not isinstance(child, (dict, list)):
            raise ConfigError(dotted, value, f"'{part}' is not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(dotted, value, f"an index below {len(node)}")
        node[int(last)] = yaml.safe_load(value) if parse and isinstance(value, str) else value
    else:
        node[last] = value


def _list_item(items: list, part: str, key: str, value: Any) -> dict:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(key, value, f"an index below {len(items)} (the list has {len(items)} entries)")
    item = items[int(part)]
    if isinstance(item, str):  # short form 'arch[:seed]' or a checkpoint: expand to a mapping
        spec = _parse_teachers([item])[0]
        item = items[int(part)] = {k: v for k, v in asdict(spec).items() if v is not None}
    if not isinstance(item, dict):
        raise ConfigError(key, item, "a mapping")
    return item
