"""Argument checks shared by the terms' knobs and builders (each raises ValueError naming the knob)."""

from __future__ import annotations

from collections.abc import Sequence


class KnobError(ValueError):
    """A term setting is invalid: ``name`` (the knob), the value given and what is allowed."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name} must be {allowed}, got {value!r}")

    def __reduce__(self):
        """Re-created from its fields, so it crosses process boundaries (Ray workers) intact."""
        return self.__class__, (self.name, self.value, self.allowed)


def check_weight(name: str, value: float) -> float:
    """A loss weight must be a finite number >= 0."""
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise KnobError(name, value, "a finite weight >= 0")
    return value


def check_positive(name: str, value: float) -> float:
    """A temperature or size must be > 0."""
    value = float(value)
    if not value > 0:
        raise KnobError(name, value, "> 0")
    return value


def check_fraction(name: str, value: float, closed_high: bool = False) -> float:
    """A value in [0, 1) (or [0, 1] with ``closed_high``), e.g. a momentum."""
    value = float(value)
    if not (0.0 <= value <= 1.0 if closed_high else 0.0 <= value < 1.0):
        raise KnobError(name, value, "a value in [0, 1]" if closed_high else "a value in [0, 1)")
    return value


def check_count(name: str, value: int) -> int:
    """A positive integer (sizes, counts)."""
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise KnobError(name, value, "an integer > 0")
    return int(value)


def check_flag(name: str, value: bool) -> bool:
    """An on/off setting must be a bool (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise KnobError(name, value, "true or false")
    return value


def check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise KnobError(name, value, f"one of {list(allowed)}")
    return value


def check_epochs(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KnobError(name, value, "an integer number of epochs >= 0")
    return value


def normalise_weights(weights: Sequence[float] | None, num_teachers: int) -> tuple[float, ...]:
    """M weights >= 0 with a positive sum, scaled to sum 1; None -> uniform."""
    if num_teachers <= 0:
        raise ValueError(f"an ensemble needs at least one teacher, got {num_teachers}")
    if weights is None:
        return tuple(1.0 / num_teachers for _ in range(num_teachers))
    w = [float(x) for x in weights]
    if len(w) != num_teachers:
        raise ValueError(f"teacher_weights has {len(w)} entries for {num_teachers} teachers")
    if any(not x >= 0 or x == float("inf") for x in w) or sum(w) <= 0:
        raise ValueError(f"teacher_weights must be finite, >= 0 and not all 0, got {w}")
    total = sum(w)
    return tuple(x / total for x in w)
