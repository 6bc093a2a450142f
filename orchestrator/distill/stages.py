"""Stage selectors (which feature stages a term reads, one value for every model) and stage pairing.

Models name their stages differently and have 2 to 5 of them (``ModelOutput.features``: e.g.
[stem, stage1, stage2, stage3] for the CIFAR ResNets, [stage1, stage2] for the tiny digits nets),
so a term's stage knob is a *selector*, resolved against each model's stage names:

- a stage name: ``stage3``;
- a position, Python-style: ``-1`` or ``last`` (the last stage), ``0`` (the first);
- a slice, Python-style: ``1:`` (every stage but the first), ``-2:`` (the last two);
- several of these joined by commas: ``stage2,-1``.

The picked stages come back in the model's order, each once. Our stage lists are RepDistiller's
feature lists without their last entry (the pooled vector, our ``embedding``), so its ``feat[1:-1]``
is the selector ``1:``, its ``feat[-2]`` is ``-1`` and its ``feat[2]`` (FitNet's ``hint_layer=2``) is ``2`` or,
by name, ``stage2`` (zoo models name their stages ``stem, stage1, ...``).
Selectors may stand in ``Needs.stages``; the teacher-output cache resolves them with :func:`select`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from orchestrator.distill.checks import KnobError
from orchestrator.models.base import Shapes

_INT = r"-?\d+"
_ITEM = re.compile(rf"^(?:(?P<index>{_INT})|(?P<start>{_INT})?:(?P<stop>{_INT})?|(?P<name>[A-Za-z_][\w.]*))$")
ALLOWED = "a stage name, a position (-1 or last = the last), a slice (1: = all but the first) or several joined by ','"


def _items(selector: str) -> list[re.Match]:
    items = ["-1" if s.strip() == "last" else s.strip() for s in str(selector).split(",")]
    matches = [_ITEM.match(s) for s in items]
    if any(m is None for m in matches):
        raise ValueError(f"stage selector {selector!r} is not {ALLOWED}")
    return matches


def check_selector(name: str, selector: str) -> str:
    """A knob's selector, checked for syntax only (the stages exist or not per model): KnobError naming ``name``."""
    try:
        _items(selector)
    except ValueError:
        raise KnobError(name, selector, ALLOWED) from None
    return str(selector)


def select(selector: str, names: Sequence[str], model: str = "the model") -> tuple[str, ...]:
    """The stage names ``selector`` picks from ``names`` (in model order, each once).

    ValueError naming ``model`` if a name is unknown, a position is out of range or nothing is picked.
    """
    names = tuple(names)
    picked: set[int] = set()
    unknown = []
    for m in _items(selector):
        if m["name"] is not None:
            if m["name"] in names:
                picked.add(names.index(m["name"]))
            else:
                unknown.append(m["name"])
        elif m["index"] is not None:
            i = int(m["index"])
            if not -len(names) <= i < len(names):
                raise ValueError(f"{model} has no stage at position {i} (selector {selector!r}); "
                                 f"its {len(names)} stages: {list(names)}")
            picked.add(i % len(names))
        else:
            start, stop = (None if v is None else int(v) for v in (m["start"], m["stop"]))
            picked.update(range(len(names))[slice(start, stop)])
    if unknown:
        raise ValueError(f"{model} has no stage(s) {unknown}; its stages: {list(names)}")
    if not picked:
        raise ValueError(f"stage selector {selector!r} picks no stage of {model}; its stages: {list(names)}")
    return tuple(names[i] for i in sorted(picked))


def select_all(selectors: Sequence[str], names: Sequence[str], model: str = "the model") -> tuple[str, ...]:
    """The union of what ``selectors`` pick (e.g. ``Needs.stages`` of several terms), in model order."""
    picked = {s for sel in selectors for s in select(sel, names, model)}
    return tuple(n for n in names if n in picked)


def positions(selector: str, shapes: Shapes, model: str, key: str) -> list[int]:
    """Positions in ``shapes.stages`` of the stages ``selector`` picks; ValueError prefixed with the knob ``key``."""
    names = list(shapes.stages)
    try:
        return [names.index(n) for n in select(selector, names, model)]
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def pair(selector: str, student: Shapes, teacher: Shapes, key: str) -> list[tuple[int, int]]:
    """(student position, teacher position) of the stages ``selector`` picks on each model.

    When the two models give different numbers of stages, the deepest ones are paired (the last k
    of each, k the smaller count): a 3-stage student against a 4-stage teacher under ``1:`` pairs
    the student's stages 2-3 with the teacher's 3-4. ``key`` names the knob in errors.
    """
    s, t = positions(selector, student, "the student", key), positions(selector, teacher, "the teacher", key)
    k = min(len(s), len(t))
    return list(zip(s[-k:], t[-k:]))


def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """The two maps (B, C, H, W) at their smaller spatial size: a larger one is average-pooled down to it
    (RepDistiller's AT and VID do so when the student's and teacher's heights differ)."""
    size = tuple(min(a, b) for a, b in zip(f_s.shape[2:], f_t.shape[2:]))
    return tuple(f if tuple(f.shape[2:]) == size else F.adaptive_avg_pool2d(f, size) for f in (f_s, f_t))
