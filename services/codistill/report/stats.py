"""Statistics of the benchmark: spread over seeds and paired differences with intervals.

Strategies of one (row, seed) share the split, the initial draws and the data
order, so "A beats B" is judged on the per-seed differences A - B (a paired
t-interval), which removes the between-seed variation both share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences A - B with a two-sided 95% t-interval."""

    a: str
    b: str
    n: int
    mean: float
    low: float
    high: float

    @property
    def beats(self) -> bool:
        """A is better than B: the interval lies above 0 (needs at least two seeds)."""
        return self.n > 1 and self.low > 0

    @property
    def loses(self) -> bool:
        return self.n > 1 and self.high < 0

    def to_json(self) -> dict:
        return {**asdict(self), "beats": self.beats, "loses": self.loses}


def paired_difference(a: str, b: str, a_values: list[float], b_values: list[float]) -> PairedDifference:
    """`a_values[i]` and `b_values[i]` come from the same seed."""
    if len(a_values) != len(b_values) or not a_values:
        raise ValueError(f"paired values of {a} and {b} must be non-empty and of one length")
    d = np.asarray(a_values, dtype=float) - np.asarray(b_values, dtype=float)
    mean = float(d.mean())
    if d.size < 2:
        return PairedDifference(a, b, 1, mean, float("-inf"), float("inf"))
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return PairedDifference(a, b, int(d.size), mean, mean - half, mean + half)
