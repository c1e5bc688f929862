"""Metrics over per-item scores: means with bootstrap confidence intervals, latency percentiles.

Why bootstrap: accuracy on a few hundred items moves by several points between samples,
so comparing systems without intervals invites reading noise as progress. The bootstrap
is seeded (same records, same interval, on every machine) and resamples in chunks, so
100,000 items cost a few megabytes, not ``n_resamples x n`` at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["Interval", "bootstrap_ci", "percentiles", "summarize"]


@dataclasses.dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate and its confidence interval."""

    value: float
    low: float
    high: float
    confidence: float = 0.95

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": self.confidence}


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values``.

    >>> bootstrap_ci([1, 1, 1, 1]).low
    1.0
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # ~16 MB of indices per chunk
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        means[start:stop] = x[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), confidence)


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}``; NaN when there are no values."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(v) for q, v in zip(qs, np.percentile(x, qs))}


def summarize(scores: dict[str, np.ndarray], *, confidence: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """One bootstrap interval per named score array."""
    return {name: bootstrap_ci(values, confidence=confidence, seed=seed) for name, values in scores.items()}
