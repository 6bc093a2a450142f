"""Numbers that survive a reseed: mean ± sd over seeds and paired t-intervals of gains."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_sd needs at least one value")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


@dataclass(frozen=True)
class PairedGain:
    """``a - b`` paired by seed: mean difference and its t-interval at ``level`` (None with one pair)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    level: float

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return bool(self.low is not None and (self.low > 0 or self.high < 0))

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "level": self.level,
                "significant": self.significant}

    def text(self, scale: float = 100.0, unit: str = "points") -> str:
        """e.g. ``+0.62 points [+0.21, +1.03], significant`` (accuracy points with ``scale=100``)."""
        if self.low is None:
            return f"{scale * self.mean:+.2f} {unit} (one seed: no interval)"
        verdict = "significant" if self.significant else "not significant"
        return f"{scale * self.mean:+.2f} {unit} [{scale * self.low:+.2f}, {scale * self.high:+.2f}], {verdict}"


def paired_gain(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> PairedGain:
    """Gain of ``a`` over ``b`` (seed -> value), paired on their common seeds.

    Interval: mean(d) ± t_{(1+level)/2, n-1} · sd(d) / sqrt(n), with d the per-seed differences.
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no common seeds to pair: {sorted(a)} vs {sorted(b)}")
    diffs = [a[s] - b[s] for s in seeds]
    mean, sd = mean_sd(diffs)
    n = len(diffs)
    if n < 2:
        return PairedGain(mean, None, None, n, level)
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return PairedGain(mean, mean - half, mean + half, n, level)
