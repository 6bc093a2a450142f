"""Typed, validated configuration: YAML file + dotted ``key.sub=value`` overrides.

Every section is a dataclass. ``load_config`` merges the defaults, a YAML file
and overrides, then validates; a bad value raises :class:`ConfigError` naming
the key, what was given and what is allowed (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.data.transforms import DEFAULT_RESIZE, RESIZE_POLICIES
from orchestrator.distill.checks import KnobError
from orchestrator.distill.registry import allowed_methods, knob_sections, method_terms, supports_teachers
from orchestrator.config.pipeline_section import PIPELINE_DEFAULTS, PipelineSection, ResolvedTeacher, TeacherSpec
from orchestrator.config.renamed_keys import RENAMED_KEYS, clash, current_items, current_key

EXPORT_FORMATS = ("onnx", "torchscript")
NORMALIZE = ("auto", "data", "pretrained")
DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100", "imagefolder")
MIN_IMAGE_SIZE = 8  # the smallest image side the models are built for (digits)
NATIVE_SIZES = {"fashion_mnist": 28, "digits": 8, "cifar10": 32, "cifar100": 32}  # fixed image sides (S x S)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""

    def __init__(self, key: str, given: Any, allowed: str):
        self.key, self.given, self.allowed = key, given, allowed
        super().__init__(f"config key '{key}': got {given!r}; allowed: {allowed}")

    def __reduce__(self):
        """Re-created from its three fields, so it crosses process boundaries (Ray, multiprocessing) intact."""
        return self.__class__, (self.key, self.given, self.allowed)


class YamlSyntaxError(ConfigError):
    """A YAML file does not parse; the message is ``file:line: what is wrong``."""

    def __init__(self, path: Path, line: int | None, problem: str):
        self.key, self.given, self.allowed = str(path), line, problem
        ValueError.__init__(self, f"{path}:{line}: {problem}" if line else f"{path}: {problem}")

    def __reduce__(self):
        return self.__class__, (Path(self.key), self.given, self.allowed)


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` of a file; a syntax error becomes :class:`YamlSyntaxError`."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" ({exc.context}, line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
        raise YamlSyntaxError(path, mark.line + 1 if mark else None, f"{exc.problem}{where}") from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(path, None, str(exc)) from exc


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | digits | cifar10 | cifar100 | imagefolder (data.root holds train/ and test/ class folders)
    root: str | None = None  # None -> $DISTILL_DATA_ROOT or ~/.cache/distill-orchestrator/data
    val_fraction: float = 0.1  # the fraction of the training split held out (seeded) for validation
    train_subset: int | None = None  # use only this many training images (seeded), None = all
    # keep the labels of this stratified, seeded fraction of the training split (the rest are unlabelled: CE and
    # other label-reading terms skip them, label-free terms such as KD see them); the default teacher ignores it
    labeled_fraction: float = 1.0
    batch_size: int = 128  # training batch size (per Ray Train worker)
    eval_batch_size: int = 512  # batch size of validation, test and teacher-output passes
    augment: bool = False  # training augmentation: random crop (and flip, but not on digits); teacher outputs are then cached per view
    loader_workers: int = 0  # DataLoader worker processes; 0 = load in the training process
    # imagefolder: the side S of the square images the models take; null = the shorter side of the first training
    # image. The other datasets have a fixed size (NATIVE_SIZES): null or that size
    image_size: int | None = None
    # how an image of another size becomes S x S: resize_then_center_crop | resize | center_crop (RESIZE_POLICIES);
    # for imagefolder training and evaluation, and for every dataset in python -m orchestrator.predict
    resize: str = DEFAULT_RESIZE

    def geometry_key(self) -> dict[str, Any]:
        """``image_size`` and ``resize`` where they are set away from their defaults: what cache keys add (so the
        keys of a config that sets neither are what they were before these keys existed)."""
        return {k: getattr(self, k) for k, v in (("image_size", None), ("resize", DEFAULT_RESIZE)) if getattr(self, k) != v}


@dataclass
class ModelConfig:
    teacher: str = "cnn_teacher"  # the teacher's architecture: a registry name, tv_<torchvision name> or timm:<timm name>
    student: str = "cnn_student_tiny"  # the student's architecture: a registry name, tv_<torchvision name> or timm:<timm name>
    student_weights: str | None = None  # tv_/timm: student only: start from these published weights (e.g. DEFAULT, pretrained)
    student_width: float | None = None  # the student's width knob, if its builder takes one (models.model_knobs); None = its own
    student_depth: int | None = None  # the student's depth knob (convs per stage of the CNN students); None = its own


@dataclass
class TeacherConfig:
    checkpoint: str | None = None  # this tool's checkpoint, a state_dict (+ model.teacher), TorchScript, runs:/ or models:/ URI
    weights: str | None = None  # tv_/timm: teacher only, without checkpoint: train it from these published weights
    normalize: str = "auto"  # auto | data | pretrained | "m1,m2,m3/s1,s2,s3": the teacher's own input normalisation
    epochs: int = 5  # epochs of a teacher trained here (no teacher.checkpoint)
    lr: float = 0.05  # learning rate of a teacher trained here
    cache_dir: str | None = None  # None -> ~/.cache/distill-orchestrator/teachers
    cache_outputs: bool = True  # precompute teacher outputs once: on the train split, or per view with data.augment
    view_topk: int = 0  # data.augment: the view cache keeps the k largest logits per view (FKD); 0 = all
    cache_max_gb: float = 2.0  # larger caches (e.g. feature maps of every training image) are not built: live teacher


PLUGINS_DOC = "modules that register objective terms, e.g. [my_pkg.l2_logits] (importable on every Ray node)"


def _distill_config() -> type:
    """``distill``: the objective (method) plus one section per registered term's knobs (its weight included)."""
    sections = [(name, knobs, field(default_factory=knobs)) for name, knobs in knob_sections().items()]
    return dataclasses.make_dataclass("DistillConfig", [
        ("method", str, field(default="crd_kd", metadata={"doc": "a preset (kd, crd_kd, dkd, ...) or terms joined by '+'"})),
        ("plugins", list[str], field(default_factory=list, metadata={"doc": PLUGINS_DOC})),
        *sections,
    ], namespace={"__module__": __name__})


DistillConfig = _distill_config()


def load_plugins(tree: dict) -> None:
    """Phase one of building a config from ``tree`` (a nested dict): import the modules its
    ``distill.plugins`` names (:mod:`orchestrator.distill.plugins`), then rebuild :data:`DistillConfig` if the
    registry holds knobs it lacks, so that phase two (``_from_dict``) knows their ``distill.<term>.*`` keys."""
    global DistillConfig
    from orchestrator.distill.plugins import PluginError, import_plugins

    section = tree.get("distill") if isinstance(tree, dict) else None
    names = coerce("distill.plugins", section.get("plugins") or [], list[str]) if isinstance(section, dict) else []
    try:
        import_plugins(names)
    except PluginError as exc:
        raise ConfigError("distill.plugins", exc.name_, exc.reason) from None
    if names and set(knob_sections()) - {f.name for f in dataclasses.fields(DistillConfig)}:
        DistillConfig = _distill_config()


@dataclass
class TrainConfig:
    epochs: int = 5  # training epochs of every trial (and of the confirmation runs)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # initial learning rate
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 weight decay
    scheduler: str = "cosine"  # cosine | step | none
    num_workers: int = 1  # Ray Train workers per trial
    in_process: bool = True  # with one worker: run it in the trial process (no worker group)
    use_gpu: bool = False  # one GPU per Ray Train worker (NCCL with several workers)
    cpus_per_worker: int = 1  # CPUs Ray reserves for each Train worker
    torch_threads: int | None = None  # None -> cpus_per_worker
    max_failures: int = 2  # restarts of a trial's workers from its last checkpoint (Train or Tune); -1 = unlimited
    keep_checkpoints: int = 1  # best checkpoints kept per trial (by sweep.metric); Ray also keeps the latest


@dataclass
class AshaConfig:
    grace_period: int | None = None  # None -> min(2, train.epochs): epoch 1 ranks configs by their start (docs/RESULTS.md)
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor of the trials at each rung


@dataclass
class ConfirmConfig:
    top_k: int = 3  # re-train the k best configs (+ the best paper default) on fresh seeds; 0 = off (unconfirmed)
    seeds: int = 4  # how many fresh seeds (never used by the search); >= 2 for an interval (docs/RESULTS.md: why 4)
    level: float = 0.95  # confidence level of the paired t-intervals


@dataclass
class SweepConfig:
    search_space: str = "crd_kd"  # a name in search_spaces/ or a YAML path
    num_samples: int = 8  # trials of the search (the paper defaults included)
    seeds: list[int] | None = None  # training seeds every trial shares (common random numbers); None -> [seed]
    paper_defaults: bool = True  # evaluate each method's paper defaults first (Optuna points_to_evaluate)
    max_concurrent: int | None = None  # None -> derived from the cluster's CPUs / GPUs
    tpe_startup_trials: int | None = None  # finished trials before TPE models them; None -> half, 2 to 10
    metric: str = "val/acc1"  # the metric the search maximises or minimises (a validation metric)
    mode: str = "max"  # max | min
    # several objectives: 'metric:mode' items, sweep.metric:sweep.mode first, then cost metrics to minimise,
    # e.g. [val/acc1:max, cost/latency_ms:min] (multi-objective search); null/[] = the single sweep.metric
    objectives: list[Any] | None = None
    # budget mode, e.g. 'cost/latency_ms <= 0.02' or 'macs <= 2e6': the most accurate student within it
    budget: str | None = None
    asha: AshaConfig = field(default_factory=AshaConfig)
    storage_path: str | None = None  # None -> ./runs (made absolute)
    resume: bool = False  # continue the latest interrupted sweep of this name (as --resume)
    baseline: bool = True  # also train the student alone on the same seeds (paired comparison)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    # keys held at their configured value, taken out of the search space: filled with the keys the space
    # samples or fixes that were given on the command line or in --config (never replaced silently)
    held_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.held_keys = list(dict.fromkeys(current_key(k) for k in self.held_keys))
        if self.objectives is not None:  # YAML's {metric: mode} items as 'metric:mode' text
            from orchestrator.config.objectives import objective_text

            self.objectives = [objective_text(item) for item in self.objectives]


@dataclass
class TrackingConfig:
    uri: str | None = None  # None -> $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # None -> the sweep name
    registered_model: str = "distill-student"  # the MLflow Model Registry name the chosen student is registered under


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx"])  # the chosen student is exported to these
    latency_threads: int = 1  # ONNX Runtime intra-op threads when a student's latency is measured (cost/latency_ms)
    include_preprocessing: bool = True  # the exported graph takes raw [0, 1] pixels and normalises them itself


@dataclass
class RayConfig:
    address: str | None = None  # None -> $RAY_ADDRESS or a local Ray
    num_cpus: int | None = None  # for a local Ray; None -> enough for the concurrency
    ship_package: bool = True  # on a cluster: every node runs the driver's copy of this package (runtime_env py_modules)


@dataclass
class Config:
    name: str = "fmnist-crd-kd"  # the sweep's name: its MLflow experiment and its folder runs/<name>-<time>/
    seed: int = 0  # the base seed: the data split, and the search's training seed unless sweep.seeds is set
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=lambda: DistillConfig())  # the current one (load_plugins)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    pipeline: PipelineSection | None = None  # the ensemble pipeline's section (pipeline_section.py); None in a sweep


STUDENT_KNOBS = {"student_width": "width", "student_depth": "depth"}  # model.<key> -> the builder's keyword


def student_knobs(model: ModelConfig) -> dict[str, Any]:
    """The size knobs ``model.student_*`` sets (keyword -> value), for the student's builder."""
    return {knob: getattr(model, key) for key, knob in STUDENT_KNOBS.items() if getattr(model, key) is not None}


def student_arch(model: ModelConfig) -> str:
    """The student's architecture as one name, its size knobs included (``cnn_student_small[width=0.5]``):
    what is built, written into checkpoints and keyed in the cost cache."""
    from orchestrator.models.base import arch_spec  # the registry (plain PyTorch)

    return arch_spec(model.student, student_knobs(model))


# ---------------------------------------------------------------- conversion


def _field_types(cls: type) -> dict[str, Any]:
    return _evaluated_field_types(cls, DistillConfig)


@functools.cache  # evaluating the string annotations is most of a config's parsing time
def _evaluated_field_types(cls: type, distill: type) -> dict[str, Any]:
    """``cls``'s field types; ``distill``, the current :data:`DistillConfig` (which Config's annotation names), is
    part of the key: a plug-in rebuilding it gives Config's fields anew."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        return coerce(key, value, args[0])
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "from_text"):  # e.g. a teacher 'arch:seed'
            value = tp.from_text(value)
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping of {sorted(_field_types(tp))}")
        return _from_dict(tp, value, prefix=key + ".")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if isinstance(value, dict) and value and all(str(k).isdigit() for k in value):  # built by index overrides
            value = [value[k] for k in sorted(value, key=int)]
        if not isinstance(value, list):
            raise ConfigError(key, value, "a list, e.g. [a, b]")
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):  # its keys named by position: pipeline.teachers.2.epochs
            return [coerce(f"{key}.{i}", v, item) for i, v in enumerate(value)]
        return [coerce(key, v, item) for v in value]
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(key, value, f"a {tp.__name__}") from exc
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(key, value, "a string")
        return str(value)
    return value


# keys that moved: old key -> where its setting lives now
MOVED_KEYS = {"data.negatives": "distill.crd.negatives",
              "distill.crd_queue": "distill.crd with distill.crd.memory=queue"}


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    types = _field_types(cls)
    unknown = sorted(set(data) - set(types))
    if unknown:
        key = prefix + unknown[0]
        if key in MOVED_KEYS:
            raise ConfigError(key, data[unknown[0]], f"none: it moved, use {MOVED_KEYS[key]}")
        raise ConfigError(key, data[unknown[0]], f"known keys here are {sorted(types)}")
    kwargs = {name: coerce(prefix + name, data[name], types[name]) for name in data}
    try:
        return cls(**kwargs)
    except KnobError as exc:  # a term's knobs check themselves (distill.<term>.*)
        raise ConfigError(prefix + exc.name, exc.value, exc.allowed) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested tree; a number reaches a list item (``pipeline.teachers.2.epochs``)."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: depth + 1]), value)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str):  # a list given as text by an earlier override: pipeline.teachers=[a, b:1]
            parsed = yaml.safe_load(child)
            child = node[part] = parsed if isinstance(parsed, (dict, list)) else child
        if not isinstance(child, (dict, list)):
            raise ConfigError(dotted, value, f"'{part}' is not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        _check(last.isdigit() and int(last) < len(node), dotted, value, f"an index below {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def _list_item(items: list, part: str, key: str, value: Any) -> dict:
    """Item ``part`` of a list of sections, as a mapping (a short text item such as 'arch:seed' expanded)."""
    _check(part.isdigit() and int(part) < len(items), key, value,
           f"an index below {len(items)} (the list has {len(items)} entries)")
    item = items[int(part)]
    if isinstance(item, str):
        item = items[int(part)] = TeacherSpec.from_text(item)
    _check(isinstance(item, dict), key, item, "a mapping")
    return item


def to_dict(cfg: Any) -> dict:
    """Nested plain dict of a config dataclass (a sweep's config: without the empty ``pipeline`` section)."""
    tree = dataclasses.asdict(cfg)
    if isinstance(cfg, Config) and cfg.pipeline is None:
        del tree["pipeline"]
    return tree


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (for MLflow params and tables)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def current_names(values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` (dotted key -> value) with renamed keys under their current names (a one-line notice each,
    see renamed_keys.py); both names of one key with different values: ConfigError naming both."""
    pair = clash(values)
    if pair:
        old, new = pair
        raise ConfigError(f"{where}{old} and {new}", [values[old], values[new]],
                          f"one of them: {old} is the deprecated name of {new}")
    return current_items(values.items())


def _current_tree(tree: dict, where: str) -> dict:
    """A loaded YAML config (nested) with renamed keys moved to their current names (ConfigError on a clash)."""
    flat = flatten(tree)
    old = [k for k in flat if k in RENAMED_KEYS]
    if old:
        current_names({k: v for k, v in flat.items() if k in RENAMED_KEYS or k in RENAMED_KEYS.values()}, where)
        for key in old:
            *sections, name = key.split(".")
            node = tree
            for part in sections:
                node = node[part]
            del node[name]
            _set_dotted(tree, current_key(key), flat[key])
    return tree


def apply_overrides(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with dotted keys set (used for sampled trial values); validated."""
    tree = to_dict(cfg)
    for dotted, value in current_names(values).items():
        _set_dotted(tree, dotted, value)
    return from_dict(tree)


def from_dict(tree: dict) -> Config:
    """A validated Config from a nested tree (``to_dict``'s; one saved by an older release: renamed keys read), after
    importing the objective plug-ins it names (:func:`load_plugins`)."""
    tree = _current_tree(copy.deepcopy(tree), "")
    load_plugins(tree)
    cfg = _from_dict(Config, tree)
    validate(cfg)
    return cfg


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> Config:
    """Defaults (``defaults``: dotted keys over the built-in ones) <- YAML file <- ``key.sub=value``
    overrides, validated."""
    tree = to_dict(Config())
    for dotted, value in current_names(copy.deepcopy(defaults or {})).items():
        _set_dotted(tree, dotted, value)
    return from_dict(layer_tree(tree, path, overrides))


def load_pipeline_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """The ensemble pipeline's config: :data:`PIPELINE_DEFAULTS` (with a ``pipeline`` section) <- YAML <- overrides."""
    return load_config(path, overrides, PIPELINE_DEFAULTS)


def pipeline_teachers(cfg: Config) -> list[ResolvedTeacher]:
    """The pipeline's teachers with every default filled in (seed + position, teacher.epochs, teacher.lr)."""
    return cfg.pipeline.resolved(cfg.seed, cfg.teacher.epochs, cfg.teacher.lr)


def pipeline_output_dir(cfg: Config) -> Path:
    """``pipeline.output_dir``, else ``./runs/<name>-pipeline`` (absolute)."""
    return Path(cfg.pipeline.output_dir or Path("runs") / f"{cfg.name}-pipeline").resolve()


def layer_tree(
    tree: dict,
    path: str | os.PathLike | None,
    overrides: list[str] | None,
    set_value: Callable[[dict, str, str], None] | None = None,
) -> dict:
    """``tree`` (defaults) <- YAML file at ``path`` <- ``key.sub=value`` overrides (raw strings)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("--config", str(path), "an existing YAML file")
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("--config", str(path), "a YAML mapping at top level")
        _merge(tree, _current_tree(loaded, f"{path}: "))
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(item, item, "overrides of the form key.sub=value")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), raw))
    renamed = {k: _parsed(raw) for k, raw in pairs if k in RENAMED_KEYS or k in RENAMED_KEYS.values()}
    current_names(renamed)  # refuses an old and a new name of one key with different values
    for key, raw in pairs:
        (set_value or _set_dotted)(tree, current_key(key), raw)
    return tree


def _parsed(raw: str) -> Any:
    """An override's raw text as YAML reads it (to compare two values), else the text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def given_keys(path: str | os.PathLike | None, overrides: list[str] | None) -> list[str]:
    """The dotted keys set in the YAML file at ``path`` or by ``key.sub=value`` overrides, in that order."""
    keys = list(flatten(read_yaml(Path(path)) or {})) if path is not None and Path(path).is_file() else []
    keys += [item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item]
    return list(dict.fromkeys(current_key(k) for k in keys))


def _merge(base: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------- validation


def _check(ok: bool, key: str, given: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, given, allowed)


def tpe_startup_trials(sweep: SweepConfig) -> int:
    """Finished trials Optuna's TPE waits for before it models them, drawing at random until then
    (Optuna's own default, 10, would leave a default sweep of 8 trials entirely random)."""
    if sweep.tpe_startup_trials is not None:
        return sweep.tpe_startup_trials
    return max(2, min(10, sweep.num_samples // 2))


def asha_grace(cfg: Config) -> int:
    """Epochs before ASHA may stop a trial: ``sweep.asha.grace_period``, else 2 (at most train.epochs)."""
    grace = cfg.sweep.asha.grace_period
    return grace if grace is not None else min(2, cfg.train.epochs)


def search_seeds(cfg: Config) -> list[int]:
    """The training seeds every trial of the sweep shares (common random numbers)."""
    return list(cfg.sweep.seeds) if cfg.sweep.seeds is not None else [cfg.seed]


def confirm_seeds(cfg: Config) -> list[int]:
    """``sweep.confirm.seeds`` fresh seeds, never used by the search: the next integers after its seeds."""
    start = max(search_seeds(cfg)) + 1
    return list(range(start, start + cfg.sweep.confirm.seeds))


def normalize_stats(value: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``teacher.normalize`` as explicit (mean, std), None for the named modes; ValueError if malformed."""
    if value in NORMALIZE:
        return None
    mean, sep, std = value.partition("/")
    stats = tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
    if not sep or len(stats[0]) != len(stats[1]) or min(stats[1]) <= 0:
        raise ValueError(value)
    return stats


def _positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(value is not None and value > 0, key, value, "a number > 0")


def _check_geometry(d: DataConfig) -> None:
    """``data.image_size``: >= 8 for an image folder, null or the fixed size otherwise; ``data.resize``: a policy."""
    if d.dataset in NATIVE_SIZES:
        native = NATIVE_SIZES[d.dataset]
        _check(d.image_size in (None, native), "data.image_size", d.image_size,
               f"null or {native}: {d.dataset} images are {native}x{native} (the size is set for data.dataset=imagefolder)")
    else:
        _check(d.image_size is None or d.image_size >= MIN_IMAGE_SIZE, "data.image_size", d.image_size,
               f"null (the shorter side of the first training image) or an integer >= {MIN_IMAGE_SIZE}")
    _check(d.resize in RESIZE_POLICIES, "data.resize", d.resize,
           f"one of {list(RESIZE_POLICIES)} (shorter side to S then the central S x S; squashed to S x S; "
           "the central S x S, not resized)")


def _check_weights(cfg: Config) -> None:
    """``teacher.weights`` / ``model.student_weights``: published weights of that model (checked offline)."""
    if cfg.teacher.weights and cfg.teacher.checkpoint:
        raise ConfigError("teacher.weights", cfg.teacher.weights, "null when teacher.checkpoint is given (it holds the weights)")
    if cfg.teacher.weights and cfg.teacher.normalize not in ("auto", "data"):
        raise ConfigError("teacher.normalize", cfg.teacher.normalize, "auto or data with teacher.weights: the teacher is "
                          "trained from them on the data's normalisation (normalize applies to a teacher.checkpoint)")
    for key, arch, weights in (("teacher.weights", cfg.model.teacher, cfg.teacher.weights),
                               ("model.student_weights", cfg.model.student, cfg.model.student_weights)):
        if weights:
            from orchestrator.models.pretrained import weights_problem  # torch only when weights are asked for

            problem = weights_problem(arch, weights)
            if problem:
                raise ConfigError(key, weights, problem)


def _check_student_knobs(model: ModelConfig) -> None:
    """``model.student_width`` / ``student_depth``: in range, and knobs the student's builder takes."""
    from orchestrator.models.base import model_knobs

    _positive("model.student_width", model.student_width, allow_none=True)
    _check(model.student_depth is None or model.student_depth >= 1, "model.student_depth", model.student_depth,
           "null or an integer >= 1")
    accepted = model_knobs(model.student)
    for key, knob in STUDENT_KNOBS.items():
        value = getattr(model, key)
        if value is not None and knob not in accepted:
            takes = ", ".join(f"model.student_{k} (its {k}, default {v})" for k, v in accepted.items()
                              if f"student_{k}" in STUDENT_KNOBS)
            raise ConfigError(f"model.{key}", value, f"null: '{model.student}' takes "
                                                      f"{takes or 'no size knobs'}")


def _check_objectives(sw: SweepConfig) -> None:
    """``sweep.objectives`` (accuracy first, then costs) and ``sweep.budget`` (one cost metric <= a limit)."""
    from orchestrator.config.budget import parse_budget
    from orchestrator.config.objectives import parse_objectives  # pure parsing (no torch)

    try:
        objectives = parse_objectives(sw.objectives or [], sw.metric, sw.mode)
    except ValueError as exc:
        raise ConfigError("sweep.objectives", sw.objectives, str(exc)) from None
    if sw.budget is None:
        return
    try:
        parse_budget(sw.budget)
    except ValueError as exc:
        raise ConfigError("sweep.budget", sw.budget, str(exc)) from None
    _check(len(objectives) <= 1, "sweep.budget", sw.budget,
           "null when sweep.objectives has several entries (budget mode maximises sweep.metric within the "
           "budget; a front is searched without one)")


def validate(cfg: Config) -> None:
    """Check every value that has a constraint; raise ConfigError on the first bad one."""
    d, t, ds, tr, sw = cfg.data, cfg.teacher, cfg.distill, cfg.train, cfg.sweep
    _check(bool(cfg.name) and "/" not in cfg.name, "name", cfg.name, "a non-empty name without '/'")
    _check(d.dataset in DATASETS, "data.dataset", d.dataset, f"one of {list(DATASETS)}")
    _check(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction, "a fraction in (0, 1)")
    _positive("data.train_subset", d.train_subset, allow_none=True)
    _check(0.0 < d.labeled_fraction <= 1.0, "data.labeled_fraction", d.labeled_fraction, "a fraction in (0, 1]")
    _positive("data.batch_size", d.batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size)
    _check(d.loader_workers >= 0, "data.loader_workers", d.loader_workers, "an integer >= 0")
    _check_geometry(d)
    _positive("teacher.epochs", t.epochs)
    _positive("teacher.cache_max_gb", t.cache_max_gb)
    _check(t.view_topk >= 0, "teacher.view_topk", t.view_topk, "an integer >= 0 (0 = all logits)")
    _positive("teacher.lr", t.lr)
    try:
        normalize_stats(t.normalize)
    except ValueError:
        raise ConfigError(
            "teacher.normalize", t.normalize, f"one of {list(NORMALIZE)} or 'mean/std' per channel, e.g. 0.5,0.5,0.5/0.2,0.2,0.2"
        ) from None
    _check_weights(cfg)
    _positive("export.latency_threads", cfg.export.latency_threads)
    known = flatten(to_dict(cfg))
    for key in sw.held_keys:
        _check(key in known and key != "sweep.held_keys", "sweep.held_keys", sw.held_keys,
               "a list of config keys such as distill.kd.temperature (see --print-config)")
    for fmt in cfg.export.formats:
        _check(fmt in EXPORT_FORMATS, "export.formats", cfg.export.formats, f"a list of {list(EXPORT_FORMATS)} (may be empty)")
    try:
        method_terms(ds.method)
    except ValueError:
        raise ConfigError("distill.method", ds.method, allowed_methods()) from None
    from orchestrator.models.base import is_known_model, known_models_text  # the registry (plain PyTorch)

    for key in ("teacher", "student"):
        name = getattr(cfg.model, key)
        if not is_known_model(name):
            raise ConfigError(f"model.{key}", name, known_models_text())
    _check_student_knobs(cfg.model)
    _positive("train.epochs", tr.epochs)
    _check(tr.optimizer in ("sgd", "adamw"), "train.optimizer", tr.optimizer, "'sgd' or 'adamw'")
    _positive("train.lr", tr.lr)
    _check(0.0 <= tr.momentum < 1.0, "train.momentum", tr.momentum, "a value in [0, 1)")
    _check(tr.weight_decay >= 0, "train.weight_decay", tr.weight_decay, "a value >= 0")
    _check(tr.scheduler in ("cosine", "step", "none"), "train.scheduler", tr.scheduler, "cosine, step or none")
    _positive("train.num_workers", tr.num_workers)
    _positive("train.cpus_per_worker", tr.cpus_per_worker)
    _positive("train.torch_threads", tr.torch_threads, allow_none=True)
    _positive("train.keep_checkpoints", tr.keep_checkpoints)
    _check(tr.max_failures >= -1, "train.max_failures", tr.max_failures, "an integer >= 0, or -1 for unlimited")
    _positive("sweep.num_samples", sw.num_samples)
    _positive("sweep.max_concurrent", sw.max_concurrent, allow_none=True)
    _positive("sweep.tpe_startup_trials", sw.tpe_startup_trials, allow_none=True)
    _check(sw.seeds is None or (bool(sw.seeds) and len(set(sw.seeds)) == len(sw.seeds) and min(sw.seeds) >= 0),
           "sweep.seeds", sw.seeds, "null or a non-empty list of distinct integers >= 0, e.g. [0] or [0, 1]")
    _check(sw.confirm.top_k >= 0, "sweep.confirm.top_k", sw.confirm.top_k, "an integer >= 0 (0 = no confirmation)")
    _check(sw.confirm.seeds >= 2 or sw.confirm.top_k == 0, "sweep.confirm.seeds", sw.confirm.seeds,
           "an integer >= 2 (an interval needs two seeds); or set sweep.confirm.top_k=0")
    _check(0.5 <= sw.confirm.level < 1.0, "sweep.confirm.level", sw.confirm.level, "a confidence level in [0.5, 1)")
    _check(sw.mode in ("max", "min"), "sweep.mode", sw.mode, "'max' or 'min'")
    _check_objectives(sw)
    _positive("sweep.asha.grace_period", sw.asha.grace_period, allow_none=True)
    _check(sw.asha.reduction_factor >= 2, "sweep.asha.reduction_factor", sw.asha.reduction_factor, "an integer >= 2")
    _check(
        sw.asha.grace_period is None or sw.asha.grace_period <= tr.epochs,
        "sweep.asha.grace_period",
        sw.asha.grace_period,
        f"at most train.epochs ({tr.epochs})",
    )
    _positive("ray.num_cpus", cfg.ray.num_cpus, allow_none=True)
    if cfg.pipeline is not None:
        _validate_pipeline(cfg)


def _validate_pipeline(cfg: Config) -> None:
    """The pipeline section against the rest: known teacher models, trained teachers (no teacher.weights),
    as many teachers as the objective supports, distinct teachers."""
    from orchestrator.models.base import is_known_model, known_models_text

    if cfg.teacher.weights:
        raise ConfigError("teacher.weights", cfg.teacher.weights, "null: the pipeline trains its teachers from scratch "
                          "(give pretrained or fine-tuned teachers as pipeline.teachers.<i>.checkpoint)")
    for i, spec in enumerate(cfg.pipeline.teachers):
        key = f"pipeline.teachers.{i}"
        if not spec.checkpoint and not is_known_model(spec.arch):
            raise ConfigError(f"{key}.arch", spec.arch, f"{known_models_text()} (or give {key}.checkpoint)")
    problem = supports_teachers(cfg.distill, len(cfg.pipeline.teachers))
    if problem:
        raise ConfigError("distill.method", cfg.distill.method, problem)
    teachers = pipeline_teachers(cfg)
    trained = [(t.arch, t.seed, t.epochs, t.lr) for t in teachers if not t.checkpoint]
    _check(len(set(trained)) == len(trained), "pipeline.teachers", [t.name for t in teachers],
           "distinct teachers (give each copy of an arch its own seed)")


def in_process(cfg: Config) -> bool:
    """One CPU worker with ``train.in_process``: Train runs the loop inside the calling process."""
    tr = cfg.train
    return tr.num_workers == 1 and tr.in_process and not tr.use_gpu
