"""Aggregates with 95% intervals: Wilson for proportions, bootstrap for means."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int


def finite_or_none(x: float) -> float | None:
    """JSON has no infinity: an interval that one item cannot bound becomes null."""
    return x if math.isfinite(x) else None


def wilson(successes: int, n: int) -> Estimate:
    """Proportion with its Wilson score interval, honest at 0% and 100%."""
    if n == 0:
        raise ValueError("no observations")
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def bootstrap_mean(values: list[float], seed: int = 0) -> Estimate:
    """Mean with a percentile bootstrap interval over items.

    With one value there is nothing to resample: the interval is unbounded
    rather than a misleading zero width.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no observations")
    mean = float(data.mean())
    if data.size == 1:
        return Estimate(mean, -math.inf, math.inf, 1)
    rng = np.random.default_rng(seed)
    resamples = rng.choice(data, size=(BOOTSTRAP_SAMPLES, data.size), replace=True).mean(axis=1)
    low, high = np.percentile(resamples, [2.5, 97.5])
    return Estimate(mean, float(low), float(high), int(data.size))
