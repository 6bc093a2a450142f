"""Search spaces: ``search_spaces/*.yaml`` -> a validated Optuna define-by-run function.

A space file::

    description: CRD+KD ...
    fixed:                       # constants merged into every trial's config
      distill.method: crd_kd
    params:
      train.lr: {type: float, low: 0.01, high: 0.2, log: true}
      distill.crd.nce_k: {type: categorical, choices: [256, 1024, 4096]}
      distill.crd.nce_t: {type: float, low: 0.03, high: 0.3, log: true,
                          when: {distill.method: [crd, crd_kd]}}   # conditional

Parameters are sampled in file order; ``when`` names keys sampled earlier (or
fixed, or in the base config) and the values for which the parameter exists.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from orchestrator.config.schema import Config, ConfigError, apply_overrides, current_names, flatten, read_yaml, to_dict
from orchestrator.config.renamed_keys import current_key
from orchestrator.distill.registry import METHOD_KEY, data_problem, paper_defaults

SPACES_DIR = Path(__file__).resolve().parents[3] / "search_spaces"  # the repository's search_spaces/
TYPES = ("float", "int", "categorical")
BRANCH_KEYS = (METHOD_KEY, "model.student")  # categorical keys whose every choice is validated with its own `when`s


@dataclass
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None
    when: dict[str, list] = field(default_factory=dict)

    def describe(self) -> str:
        if self.type == "categorical":
            text = f"one of {self.choices}"
        else:
            text = f"{self.type} in [{self.low}, {self.high}]" + (" log" if self.log else "")
            if self.step:
                text += f" step {self.step}"
        if self.when:
            text += "  only when " + ", ".join(f"{k} in {v}" for k, v in self.when.items())
        return text


@dataclass
class SearchSpace:
    name: str
    params: list[Param]
    fixed: dict[str, Any]
    description: str = ""
    held: dict[str, str] = field(default_factory=dict)  # key (its value in fixed) -> what the space had instead
    not_sampled: dict[str, str] = field(default_factory=dict)  # key -> the condition a held value rules out
    dropped: dict[str, str] = field(default_factory=dict)  # a choice taken out of the space -> why (e.g. one teacher)

    def define_by_run(self, base: Config) -> DefineByRun:
        """The Optuna define-by-run function: samples ``params``; returns ``fixed`` as constants."""
        return DefineByRun(self.params, self.fixed, flatten(to_dict(base)))

    def table(self) -> str:
        width = max([len(p.key) for p in self.params] + [len(k) for k in self.fixed] + [5])
        lines = [f"search space '{self.name}'" + (f": {self.description}" if self.description else "")]
        lines += [f"  {k:<{width}}  = {v!r}  ({'given' if k in self.held else 'fixed'})" for k, v in self.fixed.items()]
        lines += [f"  {p.key:<{width}}  ~ {p.describe()}" for p in self.params]
        lines += [f"  not sampled: {choice} ({why})" for choice, why in self.dropped.items()]
        return "\n".join(lines + ([self.held_line()] if self.held else []))

    def held_line(self) -> str:
        """One line: the given values taken out of the space (and what they replaced), '' if none."""
        if not self.held:
            return ""
        text = "held at the given values, taken out of the search space: " + "; ".join(
            f"{k}={self.fixed[k]!r} ({was})" for k, was in self.held.items())
        if self.not_sampled:
            text += "; so not sampled: " + ", ".join(f"{k} ({why})" for k, why in self.not_sampled.items())
        return text


@dataclass
class DefineByRun:
    """Picklable (Tune checkpoints the searcher) define-by-run space for ``OptunaSearch``."""

    params: list[Param]
    fixed: dict[str, Any]
    base: dict[str, Any]

    def __call__(self, trial) -> dict[str, Any]:
        chosen = {**self.base, **self.fixed}
        for p in self.params:
            if not _condition_holds(p, chosen):
                continue
            if p.type == "float":
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                chosen[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                chosen[p.key] = trial.suggest_categorical(p.key, p.choices)
        return dict(self.fixed)


def _condition_holds(p: Param, chosen: dict[str, Any]) -> bool:
    return all(chosen.get(key) in values for key, values in p.when.items())


def space_path(name_or_path: str) -> Path:
    """``crd_kd`` -> search_spaces/crd_kd.yaml; a path is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    return SPACES_DIR / f"{name_or_path}.yaml"


def space_keys(name_or_path: str) -> set[str]:
    """The keys a space file samples or fixes (empty if it cannot be read: :func:`load_space` says why)."""
    path = space_path(name_or_path)
    try:
        raw = read_yaml(path) if path.is_file() else None
    except ConfigError:
        return set()
    if not isinstance(raw, dict):
        return set()
    return {current_key(str(k)) for part in ("fixed", "params") if isinstance(raw.get(part), dict) for k in raw[part]}


def space_objectives(name_or_path: str) -> list | None:
    """The ``objectives:`` a space file declares (its default ``sweep.objectives``, e.g. compress.yaml's
    accuracy-vs-latency front), or None (none declared, or the file cannot be read: :func:`load_space` says why)."""
    raw = _read_space(name_or_path)
    return raw.get("objectives") if isinstance(raw, dict) else None


# the run-sizing keys a space file may give defaults for (``defaults:``): what suits the space, e.g. how many
# trials and how many confirmed points fit its time budget; a value the user gives wins
SPACE_DEFAULT_KEYS = ("name", "sweep.num_samples", "sweep.confirm.top_k", "sweep.confirm.seeds")


def space_defaults(name_or_path: str) -> dict[str, Any]:
    """The ``defaults:`` a space file declares (``{key: value}``, keys of :data:`SPACE_DEFAULT_KEYS`); a key
    outside them is a ConfigError naming it; {} when none (or the file cannot be read: :func:`load_space` says why)."""
    raw = _read_space(name_or_path)
    declared = raw.get("defaults") if isinstance(raw, dict) else None
    if declared is None:
        return {}
    where = space_path(name_or_path).name
    if not isinstance(declared, dict):
        raise ConfigError(f"{where}:defaults", declared, f"a mapping of some of {list(SPACE_DEFAULT_KEYS)}")
    for key in declared:
        if key not in SPACE_DEFAULT_KEYS:
            raise ConfigError(f"{where}:defaults.{key}", declared[key], f"one of {list(SPACE_DEFAULT_KEYS)}")
    return dict(declared)


def _read_space(name_or_path: str) -> Any:
    """The parsed space file, or None when it is missing or unreadable (:func:`load_space` says why)."""
    path = space_path(name_or_path)
    try:
        return read_yaml(path) if path.is_file() else None
    except ConfigError:
        return None


def available_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str, base: Config, num_train_samples: int | None = None) -> SearchSpace:
    """Read and validate a space against ``base``; every problem is a ConfigError naming the key."""
    path = space_path(name_or_path)
    if not path.is_file():
        raise ConfigError("sweep.search_space", name_or_path, f"a file in search_spaces/ ({available_spaces()}) or a YAML path")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("params", {}), dict):
        raise ConfigError("sweep.search_space", str(path), "a YAML mapping with a 'params' mapping")
    unknown = set(raw) - {"description", "fixed", "params", "objectives", "defaults"}
    if unknown:
        raise ConfigError(f"{path.name}:{sorted(unknown)[0]}", raw[sorted(unknown)[0]],
                          "description, fixed, params, objectives, defaults")
    fixed = current_names(dict(raw.get("fixed") or {}), f"{path.name}:")
    specs = current_names(dict(raw.get("params") or {}), f"{path.name}:")
    params = [_parse_param(key, spec, path.name) for key, spec in specs.items()]
    space = _hold(SearchSpace(path.stem, params, fixed, str(raw.get("description", "")).strip()), base)
    space = _for_teachers(space, base, path.name)
    _validate(space, base, num_train_samples, path.name)
    return space


def _for_teachers(space: SearchSpace, base: Config, where: str) -> SearchSpace:
    """``space`` for the ensemble pipeline's M teachers (``base.pipeline``): the ``distill.method`` choices
    that cannot distil from M teachers (e.g. DKD: one teacher only) taken out, each in ``dropped`` with why; a
    ConfigError when none is left."""
    count = len(base.pipeline.teachers) if base.pipeline is not None else 1
    param = next((p for p in space.params if p.key == METHOD_KEY and p.type == "categorical"), None)
    if count <= 1 or param is None:
        return space
    from dataclasses import replace

    from orchestrator.distill.registry import supports_teachers

    dropped = {f"{METHOD_KEY}={m}": f"one teacher only, the ensemble has {count}" for m in param.choices
               if supports_teachers(replace(base.distill, method=m), count)}
    if not dropped:
        return space
    kept = [m for m in param.choices if f"{METHOD_KEY}={m}" not in dropped]
    if not kept:
        raise ConfigError(f"{where}:{METHOD_KEY}", param.choices,
                          f"a method that distils from {count} teachers (or one teacher in pipeline.teachers)")
    params = [Param(**{**p.__dict__, "choices": kept}) if p is param else p for p in space.params
              if METHOD_KEY not in p.when or set(p.when[METHOD_KEY]) & set(kept)]  # a dropped method's knobs too
    return SearchSpace(space.name, params, space.fixed, space.description, space.held, space.not_sampled, dropped)


def _hold(space: SearchSpace, base: Config) -> SearchSpace:
    """``space`` with each of ``base.sweep.held_keys`` it samples or fixes held at the base config's value
    (taken out of ``params``, into ``fixed``); parameters whose ``when`` a held value rules out are dropped."""
    values = flatten(to_dict(base))
    params, fixed, held = list(space.params), dict(space.fixed), {}
    for key in base.sweep.held_keys:
        param = next((p for p in params if p.key == key), None)
        if param is not None:
            held[key] = f"the space sampled {param.describe()}"
            params.remove(param)
        elif key in fixed and not _same(fixed[key], values[key]):
            held[key] = f"the space fixes {fixed[key]!r}"
        else:
            continue
        fixed[key] = values[key]
    not_sampled = {}
    for p in list(params):
        ruled_out = {k: allowed for k, allowed in p.when.items() if k in held and fixed[k] not in allowed}
        if ruled_out:
            not_sampled[p.key] = "only when " + ", ".join(f"{k} in {v}" for k, v in ruled_out.items())
            params.remove(p)
    return SearchSpace(space.name, params, fixed, space.description, held, not_sampled)


def _parse_param(key: str, spec: Any, where: str) -> Param:
    label = f"{where}:{key}"
    if not isinstance(spec, dict):
        raise ConfigError(label, spec, "a mapping like {type: float, low: 0.1, high: 1.0}")
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices", "when"}
    if unknown:
        raise ConfigError(f"{label}.{sorted(unknown)[0]}", spec[sorted(unknown)[0]], "type, low, high, log, step, choices, when")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{label}.type", kind, f"one of {list(TYPES)}")
    when = spec.get("when") or {}
    if not isinstance(when, dict) or not all(isinstance(v, list) for v in when.values()):
        raise ConfigError(f"{label}.when", when, "a mapping of key -> list of values")
    when = current_names(when, f"{label}.when:")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{label}.choices", choices, "a non-empty list")
        return Param(key, kind, choices=choices, when=when)
    low, high = spec.get("low"), spec.get("high")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label}.{name}", value, "a number")
    if low > high:
        raise ConfigError(f"{label}.low", low, f"a value <= high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{label}.low", low, "a value > 0 for a log-scale parameter")
    return Param(key, kind, low=float(low) if kind == "float" else int(low), high=float(high) if kind == "float" else int(high), log=log, step=spec.get("step"), when=when)


def _validate(space: SearchSpace, base: Config, num_train_samples: int | None, where: str) -> None:
    known = flatten(to_dict(base))
    for key in list(space.fixed) + [p.key for p in space.params]:
        if key not in known:
            raise ConfigError(f"{where}:{key}", key, "a config key such as distill.kd.temperature (see --print-config)")
    for p in space.params:
        for cond in p.when:
            if cond not in known:
                raise ConfigError(f"{where}:{p.key}.when", cond, "a config key")
    _check_conditions(space, known, where)
    # Every extreme value must make a valid config (catches e.g. a negative weight), and every
    # objective the space can choose must accept the data (e.g. CRD's negatives < training samples).
    for values in extreme_points(space, base):
        try:
            cfg = apply_overrides(base, values)
        except ConfigError as exc:
            raise ConfigError(f"{where}:{exc.key}", exc.given, exc.allowed) from exc
        problem = None if num_train_samples is None else data_problem(cfg.distill, num_train_samples)
        if problem:
            key, value, allowed = problem
            raise ConfigError(f"{where}:{key}", value, allowed)


def extreme_points(space: SearchSpace, base: Config) -> list[dict[str, Any]]:
    """Points a trial can reach, for each method and student the space can choose: every parameter sampled
    for that pair at its first extreme, then each one in turn at each of its extremes (choice, low, high)."""
    known = flatten(to_dict(base))
    branches = [p for p in space.params if p.key in BRANCH_KEYS and p.type == "categorical"]
    points: list[dict[str, Any]] = []
    for combo in itertools.product(*(p.choices for p in branches)):
        fixed = {**space.fixed, **dict(zip((p.key for p in branches), combo))}
        sampled = [p for p in space.params if p not in branches and _condition_holds(p, {**known, **fixed})]
        start = {**fixed, **{p.key: _extremes(p)[0] for p in sampled}}
        points.append(start)
        points += [{**start, p.key: v} for p in sampled for v in _extremes(p)[1:]]
    return points


def _extremes(p: Param) -> list[Any]:
    return list(p.choices) if p.type == "categorical" else [p.low, p.high]


def possible_configs(space: SearchSpace, base: Config) -> list[Config]:
    """Configs at the space's extremes (every method it can choose): what the sweep must prepare for."""
    return [apply_overrides(base, values) for values in extreme_points(space, base)]


def _check_conditions(space: SearchSpace, known: dict[str, Any], where: str) -> None:
    """Raise if a ``when`` can never hold, given what its keys can be when the parameter is sampled
    (earlier categorical parameters' choices, else the fixed or base value; floats/ints are not enumerated)."""
    possible: dict[str, list | None] = {}

    def values_of(key: str) -> list | None:
        if key in possible:
            return possible[key]
        return [space.fixed[key]] if key in space.fixed else [known[key]]

    for p in space.params:
        for cond, allowed in p.when.items():
            can = values_of(cond)
            if can is not None and not any(v in allowed for v in can):
                raise ConfigError(
                    f"{where}:{p.key}.when", {cond: allowed},
                    f"values {cond} can take here ({can}); as written {p.key} is never sampled",
                )
        if p.type != "categorical":
            possible[p.key] = None
        else:  # a conditional parameter keeps its earlier value when it is not sampled
            earlier = values_of(p.key) if p.when else []
            possible[p.key] = None if earlier is None else list(p.choices) + earlier


@dataclass
class PaperPoint:
    """A method's paper defaults as a point of the space (``params``: sampled keys -> values)."""

    method: str
    params: dict[str, Any]
    deviations: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (paper value, value used)

    @property
    def label(self) -> str:
        return f"paper default {self.method}"

    def describe(self) -> str:
        text = f"{self.label}: " + ", ".join(f"{k}={v}" for k, v in self.params.items())
        if self.deviations:
            text += "  (not the paper's: " + ", ".join(
                f"{k}={used} instead of {paper}" for k, (paper, used) in self.deviations.items()) + ")"
        return text


def paper_points(space: SearchSpace, base: Config) -> list[PaperPoint]:
    """One point per method the space can choose: its paper values for the keys the space samples
    (snapped into their ranges or to the nearest choice), the base config's values for the rest."""
    known = {**flatten(to_dict(base)), **space.fixed}
    method_param = next((p for p in space.params if p.key == METHOD_KEY), None)
    methods = list(method_param.choices) if method_param else [known["distill.method"]]
    points = []
    for method in methods:
        paper = paper_defaults(method)
        chosen = {**known, "distill.method": method, **paper, **{k: space.fixed[k] for k in space.held}}
        params: dict[str, Any] = {}
        for p in space.params:
            if _condition_holds(p, chosen):
                params[p.key] = _snap(p, chosen[p.key])
        used = {**known, "distill.method": method, **params}
        deviations = {k: (v, used[k]) for k, v in paper.items() if not _same(used[k], v)}
        points.append(PaperPoint(method, params, deviations))
    return points


def _snap(p: Param, value: Any) -> Any:
    """``value`` moved inside ``p``'s range (or to its nearest choice); no value (a null key, e.g. a size
    knob left at the model's own default) becomes the first choice or the low end."""
    if value is None:
        return p.choices[0] if p.type == "categorical" else p.low
    if p.type == "categorical":
        if value in p.choices:
            return value
        numeric = [c for c in p.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numeric and isinstance(value, (int, float)):
            return min(numeric, key=lambda c: abs(c - value))
        return p.choices[0]
    clipped = min(max(value, p.low), p.high)
    return int(round(clipped)) if p.type == "int" else float(clipped)


def matching_point(params: dict[str, Any], points: list[PaperPoint]) -> PaperPoint | None:
    """The paper point whose values ``params`` (a trial's sampled values) carries, if any."""
    for point in points:
        if all(_same(params.get(k), v) for k, v in point.params.items()):
            return point
    return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def sampled_keys(space: SearchSpace) -> list[str]:
    return [p.key for p in space.params]

