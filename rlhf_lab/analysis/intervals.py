"""Intervals of a mean, the summary a stage writes of its seeds or prompts: Student t over seeds,
a percentile bootstrap where the values are skewed or bounded (KL) or many (prompts).

The PPO and best-of-n stages depend on this module alone; the report's tests and corrections live in
:mod:`rlhf_lab.analysis.stats`, so changing those reruns the report, not the runs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean (or point estimate) with its interval and the number of values behind it."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] (n={self.n})"


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± t_{n−1, (1+level)/2} · s/√n over the finite values; with one value the bounds are NaN."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_mean_interval(values: Sequence[float], level: float = LEVEL, n_resamples: int = 2000,
                            seed: int = 0) -> Interval:  # fmt: skip
    """The mean with a percentile-bootstrap interval (e.g. over prompts)."""
    x = _finite(values)
    if len(x) < 2:
        return Interval(float(x.mean()) if len(x) else math.nan, math.nan, math.nan, len(x))
    if np.all(x == x[0]):
        return Interval(float(x[0]), float(x[0]), float(x[0]), len(x))
    result = stats.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                             method="percentile", rng=seed)  # fmt: skip
    ci = result.confidence_interval
    return Interval(float(x.mean()), float(ci.low), float(ci.high), len(x))
