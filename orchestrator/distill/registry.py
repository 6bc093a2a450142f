"""The objective registry: every loss term declares here what it is and what it needs.

A term module calls :func:`register_term` once at import (every module of this package is
imported by ``orchestrator.distill``, so adding a term is adding a file; a module outside it is a
plug-in, :mod:`orchestrator.distill.plugins`). Everything outside
``distill/`` asks this registry instead of comparing method names: config validation (the
term's knob dataclass), search-space validation (:func:`data_problem`), the sweep's
teacher-output caches (:func:`teacher_needs`, :func:`cacheable`, :func:`live_with_views`), the Learner (build;
:func:`view_readers`: a second augmented view of the student's batch) and the
pipelines (:func:`supports_teachers`).

An objective (``distill.method``) is a weighted sum of terms: a preset name (``kd``,
``crd_kd``, ...) or ``+``-joined term names (``ce+kd+crd``, ``kd+crd`` without labels).
Each term's weight is ``distill.<term>.weight`` (a ``weight`` knob), unless it declares another key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

LOGITS, EMBEDDING = "logits", "embedding"
METHOD_KEY = "distill.method"  # the config key that chooses the objective


@dataclass(frozen=True)
class Needs:
    """What a term reads from each teacher (and whether it reads labels, how many views of the student's batch).

    fields: a subset of {"logits", "embedding"}; stages: feature stages (``ModelOutput.features``)
    by name (the model's ``stage_names``) or by selector (``-1``, ``1:``; see
    :mod:`orchestrator.distill.stages`), resolved per teacher. Nothing at all = label-free
    self-distillation terms or plain CE.
    student_views: augmented views of each image the term contrasts (SupCon: 2). With ``data.augment``
    (keyed views) the Learner runs the student on ``student_views - 1`` more augmentations of the batch's
    images and hands them to the terms that ask (``Batch.student_views``); the teacher sees view 1 only.
    Without augmentation such a term gets the one view.
    """

    fields: frozenset[str] = frozenset()
    stages: tuple[str, ...] = ()
    labels: bool = False
    student_views: int = 1

    def __post_init__(self):
        if isinstance(self.student_views, bool) or not isinstance(self.student_views, int) or self.student_views < 1:
            raise ValueError(f"Needs.student_views must be an integer >= 1, got {self.student_views!r}")

    @property
    def teacher(self) -> bool:
        return bool(self.fields or self.stages)

    def __or__(self, other: Needs) -> Needs:
        stages = self.stages + tuple(s for s in other.stages if s not in self.stages)
        return Needs(self.fields | other.fields, stages, self.labels or other.labels,
                     max(self.student_views, other.student_views))


OUTPUTS = Needs(frozenset({LOGITS, EMBEDDING}))  # a model's vector outputs (the cache's default fields)


@dataclass(frozen=True)
class TermSpec:
    """One registered loss term.

    name: the term's name (``distill.method`` part, ``train/loss_<name>`` metric).
    build: ``build(ctx: TermContext, knobs) -> nn.Module`` whose ``forward(batch) -> scalar``
        is the unweighted term (see :mod:`orchestrator.distill.base`).
    knobs: the dataclass of the term's settings (``distill.<name>.*``; checks in ``__post_init__``),
        or None for a term without settings.
    weight_key: dotted config key of the term's weight.
    needs: what it reads (constant, or a function of its knobs, e.g. a chosen feature stage).
    cacheable: its teacher inputs may be precomputed once on un-augmented data (False: the
        teacher runs live, e.g. a term that needs augmented spatial features).
    view_cacheable: with augmentation, its teacher inputs may come from the view cache (the
        teacher's fp16 logits/embedding per (seed, epoch, index), ``orchestrator/teacher_outputs/views.py``);
        None (default): yes when it is ``cacheable`` and reads no feature stages (the view
        cache stores none: FitNet, AT and the other feature terms run their teacher live).
    multi_teacher: "outputs" (applied to the ensemble's combined outputs), "per_teacher"
        (one copy per teacher, weighted) or None (one teacher only: the pipeline refuses it).
    parts: its own trainable or stateful parts, for listings (e.g. "embedding heads", "memory banks").
    pre_stage: the knob that gives its pre-stage epochs (initialisation before distillation), or None.
    paper_defaults: the paper's values of its knobs and weight, as dotted config keys.
    data_check: ``(knobs, num_train_samples) -> (key, value, allowed) | None`` for limits that
        depend on the data (e.g. fewer negatives than samples).
    reference: the paper and the code its values are checked against (repository and commit); its values
        are pinned in ``tests/data/pinned/`` (``python -m orchestrator.distill.pin``).
    no_reference: instead of ``reference``, why the term has no reference code to check it against (e.g.
        "a formula of this project"); its own test file checks its values, and it needs no pinned case, no
        search space of its own and no place in the committed docs/OBJECTIVES.md and docs/CONFIG.md (both
        list it once regenerated).
    """

    name: str
    build: Callable[..., Any]
    knobs: type | None = None
    weight_key: str = ""
    needs: Needs | Callable[[Any], Needs] = field(default_factory=Needs)
    cacheable: bool = True
    view_cacheable: bool | None = None
    multi_teacher: str | None = None
    parts: tuple[str, ...] = ()
    pre_stage: str | None = None
    paper_defaults: Mapping[str, Any] = field(default_factory=dict)
    data_check: Callable[[Any, int], tuple[str, Any, str] | None] | None = None
    reference: str = ""
    no_reference: str = ""

    def needs_for(self, knobs: Any) -> Needs:
        return self.needs(knobs) if callable(self.needs) else self.needs

    def views_for(self, knobs: Any) -> bool:
        """Whether its teacher inputs may come from the view cache (see ``view_cacheable``)."""
        if self.view_cacheable is not None:
            return self.view_cacheable
        return self.cacheable and not self.needs_for(knobs).stages


@dataclass(frozen=True)
class Preset:
    """A named objective: its terms in order and the paper's values of their knobs and weights."""

    name: str
    terms: tuple[str, ...]
    paper_defaults: Mapping[str, Any] = field(default_factory=dict)


MULTI_TEACHER = ("outputs", "per_teacher", None)
RESERVED = ("method", "plugins", "gamma", "alpha", "beta")  # the distill section's own keys
_TERMS: dict[str, TermSpec] = {}
_PRESETS: dict[str, Preset] = {}


def register_term(spec: TermSpec) -> TermSpec:
    """Add a term (once per name); its weight key defaults to ``distill.<name>.weight``."""
    if spec.name in _TERMS:
        raise ValueError(f"objective term '{spec.name}' is registered twice")
    if not spec.name.isidentifier() or "+" in spec.name:
        raise ValueError(f"a term name must be an identifier, got {spec.name!r}")
    if spec.name in RESERVED:
        raise ValueError(f"a term cannot be named {spec.name!r}: distill.{spec.name} is a key of its own")
    if spec.multi_teacher not in MULTI_TEACHER:
        raise ValueError(f"multi_teacher must be one of {list(MULTI_TEACHER)}, got {spec.multi_teacher!r}")
    if not spec.weight_key:
        if spec.knobs is None or "weight" not in spec.knobs.__dataclass_fields__:
            raise ValueError(f"term '{spec.name}' needs a weight_key or a 'weight' field in its knobs")
        spec = TermSpec(**{**spec.__dict__, "weight_key": f"distill.{spec.name}.weight"})
    _TERMS[spec.name] = spec
    return spec


def register_preset(name: str, terms: tuple[str, ...], paper_defaults: Mapping[str, Any] | None = None) -> Preset:
    """A named objective (``distill.method: <name>``) made of registered ``terms``."""
    if name in _PRESETS or "+" in name:
        raise ValueError(f"preset '{name}' is registered twice or contains '+'")
    preset = Preset(name, tuple(terms), dict(paper_defaults or {}))
    _PRESETS[name] = preset
    return preset


def term(name: str) -> TermSpec:
    if name not in _TERMS:
        raise ValueError(f"unknown objective term '{name}'; known terms: {', '.join(term_names())}")
    return _TERMS[name]


def term_names() -> list[str]:
    return sorted(_TERMS)


def method_names() -> list[str]:
    """The preset names (each term can also be combined: ``ce+kd+crd``)."""
    return sorted(_PRESETS)


def knob_sections() -> dict[str, type]:
    """term name -> its knobs dataclass: the ``distill.<name>`` config sections."""
    return {name: spec.knobs for name, spec in sorted(_TERMS.items()) if spec.knobs is not None}


def allowed_methods() -> str:
    return (f"a preset ({', '.join(method_names())}) or terms joined by '+' "
            f"(e.g. ce+kd+crd) from: {', '.join(term_names())}")


def method_terms(method: str) -> tuple[str, ...]:
    """The terms of ``distill.method`` in order; ValueError naming what is allowed."""
    if method in _PRESETS:
        return _PRESETS[method].terms
    parts = tuple(p.strip() for p in str(method).split("+"))
    if "+" not in str(method) and method not in _TERMS:
        raise ValueError(f"unknown distillation method '{method}'; allowed: {allowed_methods()}")
    unknown = [p for p in parts if p not in _TERMS]
    if unknown or len(set(parts)) != len(parts) or not parts:
        raise ValueError(f"distillation method '{method}' has unknown or repeated terms {unknown or list(parts)}; "
                         f"allowed: {allowed_methods()}")
    return parts


def paper_defaults(method: str) -> dict[str, Any]:
    """The paper's values for ``method`` as dotted config keys: a preset's own, else its terms' merged."""
    if method in _PRESETS:
        return dict(_PRESETS[method].paper_defaults)
    out: dict[str, Any] = {}
    for name in method_terms(method):
        out.update(term(name).paper_defaults)
    return out


def knobs_of(distill_cfg: Any, name: str) -> Any:
    """Term ``name``'s knobs from the ``distill`` config section (its defaults if the config predates the term)."""
    spec = term(name)
    if spec.knobs is None:
        return None
    return getattr(distill_cfg, name, None) or spec.knobs()


def weights(distill_cfg: Any) -> dict[str, float]:
    """term -> weight for ``distill_cfg.method``, each read from the term's weight key."""
    out = {}
    for name in method_terms(distill_cfg.method):
        _, section, *rest = term(name).weight_key.split(".")
        node = knobs_of(distill_cfg, name) if section == name else getattr(distill_cfg, section)
        for part in rest:
            node = getattr(node, part)
        out[name] = float(node)
    return out


def label_readers(distill_cfg: Any) -> list[str]:
    """The enabled terms that read labels (with hidden labels they see the labelled rows only)."""
    return [n for n in method_terms(distill_cfg.method) if term(n).needs_for(knobs_of(distill_cfg, n)).labels]


def view_readers(distill_cfg: Any) -> list[str]:
    """The enabled terms that ask for more than one view of the student's batch (``Needs.student_views``)."""
    return [n for n in method_terms(distill_cfg.method)
            if term(n).needs_for(knobs_of(distill_cfg, n)).student_views > 1]


def teacher_needs(distill_cfg: Any) -> Needs:
    """What the enabled terms read from each teacher (the union; with labels and the most student views)."""
    out = Needs()
    for name in method_terms(distill_cfg.method):
        out = out | term(name).needs_for(knobs_of(distill_cfg, name))
    return out


def needs_teacher(distill_cfg: Any) -> bool:
    return teacher_needs(distill_cfg).teacher


def cacheable(distill_cfg: Any) -> bool:
    """Every enabled term that reads a teacher accepts precomputed (un-augmented) teacher outputs."""
    return all(term(n).cacheable for n in method_terms(distill_cfg.method)
               if term(n).needs_for(knobs_of(distill_cfg, n)).teacher)


def live_with_views(distill_cfg: Any) -> list[str]:
    """The enabled terms that read a teacher but do not accept view-cached inputs (with augmentation they
    need the teacher live); [] when the view cache serves the whole objective."""
    return [n for n in method_terms(distill_cfg.method)
            if term(n).needs_for(knobs_of(distill_cfg, n)).teacher and not term(n).views_for(knobs_of(distill_cfg, n))]


def supports_teachers(distill_cfg: Any, count: int) -> str | None:
    """None if ``distill_cfg.method`` can distil from ``count`` teachers, else a message naming the terms that cannot."""
    if count <= 1:
        return None
    single = [n for n in method_terms(distill_cfg.method)
              if term(n).multi_teacher is None and term(n).needs_for(knobs_of(distill_cfg, n)).teacher]
    if single:
        several = ", ".join(n for n in term_names() if term(n).multi_teacher is not None)
        return (f"distill.method '{distill_cfg.method}': term(s) {', '.join(single)} support one teacher only, "
                f"not {count}; terms that support several: {several}")
    return None


def data_problem(distill_cfg: Any, num_train_samples: int) -> tuple[str, Any, str] | None:
    """The first (key, value, allowed) a term's data limit rejects for this training-set size."""
    for name in method_terms(distill_cfg.method):
        spec = term(name)
        if spec.data_check is not None:
            problem = spec.data_check(knobs_of(distill_cfg, name), num_train_samples)
            if problem:
                return problem
    return None


STAGE_KNOBS = ("stages", "stage")  # the knob a term reading feature stages takes its selectors from


def stage_problem(distill_cfg: Any, num_classes: int, student: Any, teachers: tuple) -> tuple[str, Any, str] | None:
    """The first (key, value, allowed) of a term reading feature stages that cannot be built on these models
    (``student``/``teachers``: their ``Shapes``): a stage a model lacks, too few stages, unequal channels..."""
    import torch

    from orchestrator.distill.base import TermContext

    ctx = TermContext(num_classes, student, tuple(teachers), tuple(1 / len(teachers) for _ in teachers),
                      torch.zeros(0, dtype=torch.long))
    for name in method_terms(distill_cfg.method):
        spec, knobs = term(name), knobs_of(distill_cfg, name)
        if not spec.needs_for(knobs).stages:
            continue
        try:
            spec.build(ctx, knobs)
        except ValueError as exc:
            knob = next(k for k in STAGE_KNOBS if hasattr(knobs, k))
            return f"distill.{name}.{knob}", getattr(knobs, knob), f"selectors of stages the models have ({exc})"
    return None


def describe(method: str, distill_cfg: Any = None) -> str:
    """One line per term: needs, cacheability, ensembles, parts, pre-stage and its knobs (for --dry-run and
    docs); the knobs' values are ``distill_cfg``'s (the ``distill`` config section), else their defaults."""
    lines = []
    for name in method_terms(method):
        s = term(name)
        knobs = knobs_of(distill_cfg, name) if distill_cfg is not None else s.knobs() if s.knobs is not None else None
        needs = s.needs_for(knobs)
        reads = sorted(needs.fields) + [f"features[{st}]" for st in needs.stages]
        lines.append(
            f"  {name}: weight {s.weight_key}; reads {', '.join(reads) or 'no teacher'}"
            f"{' + labels' if needs.labels else ''}"
            f"{f' + {needs.student_views} student views (data.augment; else 1)' if needs.student_views > 1 else ''}"
            f"; {'cacheable' if s.cacheable else 'live teacher'}"
            f"{'' if not needs.teacher else ' (views too)' if s.views_for(knobs) else ' (augmented: live)'}; "
            f"teachers: {s.multi_teacher or 'one'}"
            + (f"; parts: {', '.join(s.parts)}" if s.parts else "")
            + (f"; pre-stage: distill.{name}.{s.pre_stage}" if s.pre_stage else "")
            + (f"; knobs: {', '.join(f'distill.{name}.{f.name}={getattr(knobs, f.name)!r}' for f in fields(knobs))}"
               if knobs is not None else "")
        )
    return "\n".join(lines)
