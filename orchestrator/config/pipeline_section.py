"""The ``pipeline`` section of the config (the ensemble pipeline's CLIs), and its defaults.

One YAML file (or none) and ``key.sub=value`` overrides, like the sweep::

    name: fmnist-ensemble          # every key of the sweep works here: data.*, train.*, distill.*, ...
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
      compress: false              # true: the ensemble as teacher of a compression search (search_spaces/compress.yaml)
      seeds: 3                     # each student trained on seeds seed, seed+1, ... (mean ± sd, paired intervals)

Overrides reach list items by position (``pipeline.teachers.2.epochs=3``) or
replace the list (``pipeline.teachers=[cnn_teacher, cnn_teacher:1]``; a string
item is ``arch`` or ``arch:seed``, anything else a checkpoint path / MLflow URI).
A teacher's ``epochs`` / ``lr`` default to ``teacher.epochs`` / ``teacher.lr``.

The sweep's configs have no pipeline section (``Config.pipeline`` is None); the pipeline's
CLIs start from :data:`PIPELINE_DEFAULTS`. Checks of single values live here
(``__post_init__``, KnobError naming the field); those that need the whole config
(known models, teachers the objective supports, distinct teachers) in ``config.validate``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.distill.checks import KnobError

SHORT_TEACHER = re.compile(r"^(?P<arch>[A-Za-z_][\w]*)(?::(?P<seed>\d+))?$")
DEFAULT_TEACHER_ARCH = "cnn_teacher"


@dataclass
class TeacherSpec:
    """One ensemble member: trained here (arch/seed/epochs/lr) or given (checkpoint path or MLflow URI;
    ``arch``: the model a plain state_dict checkpoint was saved from)."""

    arch: str | None = None  # None -> cnn_teacher when trained here
    seed: int | None = None  # None -> the pipeline seed + the teacher's position
    epochs: int | None = None  # None -> teacher.epochs
    lr: float | None = None  # None -> teacher.lr
    checkpoint: str | None = None  # a given teacher: a checkpoint file or runs:/ / models:/ URI (arch: its model)

    def __post_init__(self):
        self.checkpoint = self.checkpoint or None
        if self.arch is None and self.checkpoint is None:
            self.arch = DEFAULT_TEACHER_ARCH
        if self.epochs is not None and self.epochs <= 0:
            raise KnobError("epochs", self.epochs, "an integer > 0")
        if self.lr is not None and self.lr <= 0:
            raise KnobError("lr", self.lr, "a number > 0")
        if self.seed is not None and self.seed < 0:
            raise KnobError("seed", self.seed, "an integer >= 0")

    @staticmethod
    def from_text(text: str) -> Any:
        """A list item given as text: ``arch``, ``arch:seed``, a YAML mapping, or a checkpoint path / URI."""
        if text.strip().startswith("{"):
            return yaml.safe_load(text)
        match = SHORT_TEACHER.match(text)
        if match:
            seed = match.group("seed")
            return {"arch": match.group("arch"), "seed": None if seed is None else int(seed)}
        return {"checkpoint": text}


@dataclass
class PipelineSection:
    teachers: list[TeacherSpec] = field(  # M teachers: trained here (arch, seed, epochs, lr) or given (checkpoint)
        default_factory=lambda: [
            TeacherSpec("cnn_teacher", seed=0),
            TeacherSpec("cnn_teacher", seed=1),
            TeacherSpec("cnn_teacher_wide", seed=2),
        ]
    )
    sweep: bool = False  # distil the ensemble with a sweep over sweep.search_space instead of one run
    # the ensemble as the teacher of a compression search (sweep.search_space, default compress): its confirmed
    # accuracy-vs-cost front with the ensemble and each teacher as reference rows, instead of the three students
    compress: bool = False
    output_dir: str | None = None  # None -> ./runs/<name>-pipeline (stage results, students, comparison)
    inference_batch: int = 256  # batch size of the inference-time measurement
    timing_repeats: int = 10  # timed batches per model (median reported)
    seeds: int = 3  # training seeds of each student (seed, seed+1, ...): mean ± sd and paired 95% t-intervals
    # Ray tasks of one stage at once (teachers, teacher evaluations, student runs); the others wait for a slot and
    # reuse the finished tasks' processes. None: all at once, sharing the CPUs (each process imports torch, Ray and
    # MLflow and holds the data: set it on a small machine or for many seeds)
    max_concurrent: int | None = None

    def student_seeds(self, seed: int) -> list[int]:
        """The students' training seeds: ``seed`` .. ``seed + seeds - 1`` (one more seed adds one, keeps the rest)."""
        return [seed + i for i in range(self.seeds)]

    def __post_init__(self):
        self.output_dir = self.output_dir or None
        if not self.teachers:
            raise KnobError("teachers", self.teachers,
                            "a non-empty list of teachers ({arch, seed, epochs, lr} or {checkpoint})")
        if self.inference_batch <= 0:
            raise KnobError("inference_batch", self.inference_batch, "an integer > 0")
        if self.timing_repeats <= 0:
            raise KnobError("timing_repeats", self.timing_repeats, "an integer > 0")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds <= 0:
            raise KnobError("seeds", self.seeds, "an integer > 0 (>= 2 for an interval)")
        if self.max_concurrent is not None and self.max_concurrent <= 0:
            raise KnobError("max_concurrent", self.max_concurrent, "an integer > 0, or null (every task at once)")

    def resolved(self, seed: int, epochs: int, lr: float) -> list[ResolvedTeacher]:
        """The teachers with every default filled in: ``seed`` (the config's) + position, ``teacher.epochs``,
        ``teacher.lr``."""
        out = []
        for i, spec in enumerate(self.teachers):
            t_seed = seed + i if spec.seed is None else spec.seed
            if spec.checkpoint:
                is_uri = ":/" in spec.checkpoint
                name = f"t{i}-" + ("mlflow" if is_uri else Path(spec.checkpoint).stem)
            else:
                name = f"t{i}-{spec.arch}-s{t_seed}"
            arch, given_arch = (None, spec.arch) if spec.checkpoint else (spec.arch, None)
            out.append(ResolvedTeacher(i, name, arch, t_seed, spec.epochs or epochs, spec.lr or lr, spec.checkpoint,
                                       given_arch))
        return out


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


# The pipeline CLIs' defaults on top of the sweep's (KD is the cheap, strong default for an ensemble:
# with cached teacher outputs it costs almost nothing per step).
PIPELINE_DEFAULTS: dict[str, Any] = {
    "name": "fmnist-ensemble",
    "distill.method": "kd",
    "distill.kd.temperature": 4.0,
    "train.epochs": 15,
    "teacher.epochs": 3,
    "sweep.search_space": "ensemble",
    "sweep.num_samples": 6,
    "sweep.baseline": False,  # the pipeline trains the student alone as a stage of its own
    "pipeline": asdict(PipelineSection()),
}
