"""Counts out of n with honest intervals: "over-optimised in k of n seeds" is an estimate of a rate,
and with n = 5 or 10 its interval is wide (Wilson's score interval, via scipy)."""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Proportion:
    k: int
    n: int
    ci_low: float
    ci_high: float

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def __str__(self) -> str:
        if not self.n:
            return "0 of 0"
        return f"{self.k} of {self.n} [95 % CI {100 * self.ci_low:.0f}–{100 * self.ci_high:.0f} %]"


def wilson_interval(k: int, n: int, level: float = LEVEL) -> Proportion:
    """k successes of n with Wilson's score interval (Wilson 1927): unlike the normal approximation it
    stays inside [0, 1] and is not empty at k = 0 or k = n, where small-n counts like 5 of 5 sit."""
    if n == 0:
        return Proportion(0, 0, float("nan"), float("nan"))
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Proportion(int(k), int(n), float(ci.low), float(ci.high))
