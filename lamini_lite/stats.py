"""95% intervals for the book's statistical claims.

A claim such as "random answers leave held-out accuracy unchanged" or
"Unknown examples are fitted more slowly" is about a population, measured on
a sample of facts. Each helper here returns an interval that a chapter prints
beside its number and that :mod:`lamini_lite.claims` can test instead of the
point estimate:

* :func:`wilson_interval`: a proportion (k of n answers right);
* :func:`newcombe_difference`: a difference of two independent proportions;
* :func:`bootstrap_interval`: any statistic of one sample (percentile bootstrap);
* :func:`paired_bootstrap_difference`: mean of paired differences (same facts,
  two conditions), resampling the pairs.

All intervals are two-sided at 95% unless ``confidence`` says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "wilson_interval", "newcombe_difference", "bootstrap_interval",
           "paired_bootstrap_difference", "z_value"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval ``[low, high]``."""

    estimate: float  # the statistic on the observed sample
    low: float  # lower end of the interval
    high: float  # upper end of the interval
    confidence: float = 0.95  # two-sided coverage

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"Interval: low ({self.low}) must not exceed high ({self.high})")

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside the interval."""
        return value < self.low or value > self.high

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. x100 for percent)."""
        lo, hi = sorted((self.low * factor, self.high * factor))
        return Interval(self.estimate * factor, lo, hi, self.confidence)

    def __str__(self) -> str:
        pct = round(100 * self.confidence)
        return f"{self.estimate:.3g} ({pct}% CI {self.low:.3g} to {self.high:.3g})"


def z_value(confidence: float = 0.95) -> float:
    """The two-sided normal quantile for ``confidence`` (1.96 at 95%)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    # inverse of the standard normal CDF by bisection on math.erf (no SciPy needed)
    target, lo, hi = 0.5 + confidence / 2, 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials.

    Unlike the normal approximation it stays inside [0, 1] and is honest at
    k = 0 or k = n (where the plain interval collapses to a point).
    """
    k, n = _count("k", k), _count("n", n)
    if n == 0:
        raise ValueError("n must be positive: a proportion of zero trials has no interval")
    if k > n:
        raise ValueError(f"k ({k}) must not exceed n ({n})")
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends, not rounding noise
    high = 1.0 if k == n else min(1.0, centre + half)
    return Interval(p, low, high, confidence)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int,
                        confidence: float = 0.95) -> Interval:
    """Interval for ``k1/n1 - k2/n2`` of two independent proportions.

    Newcombe's method 10: it combines the two Wilson intervals, and keeps good
    coverage at small n and at proportions near 0 or 1.
    """
    a, b = wilson_interval(k1, n1, confidence), wilson_interval(k2, n2, confidence)
    d = a.estimate - b.estimate
    low = d - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = d + math.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
    return Interval(d, low, high, confidence)


def bootstrap_interval(values: Sequence[float] | np.ndarray,
                       statistic: Callable[[np.ndarray], float] = np.mean, *,
                       n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> Interval:
    """Percentile-bootstrap interval of ``statistic`` over one sample.

    ``values`` is resampled with replacement ``n_boot`` times (its first axis,
    so a 2-D array resamples rows); ``seed`` makes the interval reproducible.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError("values must be a non-empty sequence")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite numbers")
    if n_boot < 100:
        raise ValueError(f"n_boot must be at least 100, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.array([statistic(x[i]) for i in idx])
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return Interval(float(statistic(x)), float(lo), float(hi), confidence)


def paired_bootstrap_difference(a: Sequence[float], b: Sequence[float], *,
                                n_boot: int = 2000, seed: int = 0,
                                confidence: float = 0.95) -> Interval:
    """Interval for ``mean(a - b)`` where ``a[i]`` and ``b[i]`` are paired.

    The pairs (e.g. the same fact before and after fine-tuning) are resampled
    together, so what the two conditions share does not widen the interval.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same shape), got {x.shape} and {y.shape}")
    return bootstrap_interval(x - y, np.mean, n_boot=n_boot, seed=seed, confidence=confidence)
