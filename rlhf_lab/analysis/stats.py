"""Intervals and tests for the report's comparisons: over seeds (PPO runs) or prompts (best-of-n).

Pure functions of arrays (numpy/scipy only). The methods, as the report states them:

- a level over seeds: mean ± Student t interval, t_{n−1} · s / √n (:func:`t_interval`);
- a difference between two settings: Welch's t (unequal variances) for the interval and the
  p-value (:func:`welch_difference`), with an exact permutation p-value beside it
  (:func:`permutation_p`); seeds are treated as independent (runs share a seed's first batch,
  then diverge);
- anything that is not a mean (a fitted coefficient): a percentile bootstrap that resamples whole
  groups, e.g. seeds with all their points (:func:`group_bootstrap`);
- a mean over prompts: a percentile bootstrap over prompts (:func:`bootstrap_mean_interval`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

# A stage's summary of its seeds needs only these; they live apart so that the PPO and best-of-n stages
# depend on them alone, and a change to the report's tests below reruns the report, not every run.
from rlhf_lab.analysis.intervals import LEVEL, Interval, _finite, bootstrap_mean_interval, t_interval  # noqa: F401


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with a t interval and two-sided p-value (Welch's, or paired where
    :func:`paired_difference` made it), and a permutation p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_permutation: float
    n_a: int
    n_b: int

    def to_dict(self) -> dict:
        return asdict(self)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """Difference of means with Welch's t interval and p-value (two-sided), plus the exact
    permutation p-value of :func:`permutation_p`. NaN where either side has fewer than 2 values."""
    x, y = _finite(a), _finite(b)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, math.nan, len(x), len(y))
    if np.var(x) == 0 and np.var(y) == 0:  # no spread at all: Welch's t is undefined
        p = 1.0 if diff == 0 else 0.0
        return Difference(diff, diff, diff, p, permutation_p(x, y), len(x), len(y))
    result = stats.ttest_ind(x, y, equal_var=False)
    ci = result.confidence_interval(confidence_level=level)
    return Difference(diff, float(ci.low), float(ci.high), float(result.pvalue), permutation_p(x, y),
                      len(x), len(y))  # fmt: skip


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = LEVEL) -> Difference:
    """mean(a − b) over the seeds both sides have (``{seed: value}``; one run measured two ways, as an
    early-stopping rule read over its baseline's own runs): the paired t interval and p-value, and
    the sign-flip permutation p. NaN with fewer than 2 pairs."""
    seeds = sorted(s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s]))
    x = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    if len(x) < 2:
        return Difference(float(x.mean()) if len(x) else math.nan, math.nan, math.nan, math.nan, math.nan,
                          len(x), len(x))  # fmt: skip
    diff = float(x.mean())
    if np.var(x) == 0:  # every pair moved alike: the t statistic is undefined
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, 1.0 if diff == 0 else 0.0, len(x), len(x))
    result = stats.ttest_1samp(x, 0.0)
    ci = result.confidence_interval(confidence_level=level)
    return Difference(diff, float(ci.low), float(ci.high), float(result.pvalue),
                      permutation_p(x, np.zeros_like(x), paired=True), len(x), len(x))  # fmt: skip


def permutation_p(a: Sequence[float], b: Sequence[float], paired: bool = False, n_resamples: int = 9999,
                  seed: int = 0) -> float:  # fmt: skip
    """Two-sided permutation p-value of the difference of means.

    Unpaired: the group labels are permuted; paired (``a[i]`` with ``b[i]``): the signs of the
    differences are flipped. Exact (every arrangement) when there are at most ``n_resamples`` of
    them, as with a few seeds: 3 vs 3 has 20 arrangements, so its smallest p-value is 0.1.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if paired:
        if len(x) != len(y):
            raise ValueError(f"paired samples need equal lengths, got {len(x)} and {len(y)}")
        result = stats.permutation_test((x - y,), np.mean, permutation_type="samples",
                                        n_resamples=n_resamples, rng=seed)  # fmt: skip
    else:
        statistic = lambda u, v: np.mean(u) - np.mean(v)  # noqa: E731
        result = stats.permutation_test((x, y), statistic, permutation_type="independent",
                                        n_resamples=n_resamples, rng=seed)  # fmt: skip
    return float(result.pvalue)


def group_bootstrap(groups: Sequence, statistic: Callable[[list], Sequence[float]], level: float = LEVEL,
                    n_resamples: int = 1000, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Percentile intervals of a statistic of several groups, resampling whole groups.

    ``statistic(list_of_groups)`` returns a vector; each resample draws len(groups) groups with
    replacement. Returns (len(vector), 2) rows of [low, high]. A resample where the statistic
    fails (e.g. a fit that does not converge) is dropped.
    """
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        pick = rng.integers(len(groups), size=len(groups))
        try:
            draws.append(np.asarray(statistic([groups[i] for i in pick]), dtype=np.float64))
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
    if not draws:
        raise ValueError("group_bootstrap: the statistic failed on every resample")
    tail = (1 - level) / 2 * 100
    return np.percentile(np.stack(draws), [tail, 100 - tail], axis=0).T


# ------------------------------------------------------------------------ families of tests
def verdict(diff: float, p_adjusted: float, alpha: float = 0.05) -> str:
    """'higher', 'lower' (a supported harm when the difference is the treatment minus the control)
    or 'not supported': the two-sided test's outcome at ``alpha`` after correction."""
    if not (np.isfinite(p_adjusted) and p_adjusted < alpha):
        return "not supported"
    return "higher" if diff > 0 else "lower"


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): sorted ascending, p_(i) · (m − i + 1),
    made monotone by a running maximum and capped at 1. NaN p-values are left out of the family
    (m counts only the finite ones) and stay NaN. Rejecting where p_holm < α keeps the family-wise
    error rate at α under any dependence between the tests."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    finite = np.nonzero(np.isfinite(p))[0]
    m = len(finite)
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    adjusted[order] = stepped
    return adjusted


def minimum_detectable_difference(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = 0.05,
                                  power: float = 0.8) -> float:  # fmt: skip
    """The smallest true difference of means a two-sided Welch test at level ``alpha`` detects with
    probability ``power``, from the observed spreads: (t_{1−α/2, ν} + t_{power, ν}) · √(s_a²/n_a + s_b²/n_b),
    ν the Welch–Satterthwaite degrees of freedom (the usual t approximation to the noncentral t)."""
    if n_a < 2 or n_b < 2:
        return math.nan
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def paired_mde(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The paired analogue of :func:`minimum_detectable_difference` (n pairs whose differences have
    spread ``sd``): (t_{1−α/2, n−1} + t_{power, n−1}) · s/√n."""
    if n < 2:
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


def _first_n_detecting(detectable: Callable[[int], float], difference: float, most: int) -> int | None:
    """The smallest n ≥ 2 whose detectable difference reaches |difference|; None past ``most``."""
    if not np.isfinite(difference) or difference == 0:
        return None
    return next((n for n in range(2, most + 1) if detectable(n) <= abs(difference)), None)


def seeds_needed(sd_a: float, sd_b: float, difference: float, alpha: float = 0.05, power: float = 0.8,
                 most: int = 10_000) -> int | None:  # fmt: skip
    """Seeds per side (equal on both) for :func:`minimum_detectable_difference` to reach |difference|
    at these spreads; None where it needs more than ``most`` (or the difference is 0)."""
    if not (np.isfinite(sd_a) and np.isfinite(sd_b)):
        return None
    return _first_n_detecting(lambda n: minimum_detectable_difference(sd_a, n, sd_b, n, alpha, power), difference, most)


def paired_seeds_needed(sd: float, difference: float, alpha: float = 0.05, power: float = 0.8,
                        most: int = 10_000) -> int | None:  # fmt: skip
    """Pairs for :func:`paired_mde` to reach |difference| at the differences' spread ``sd``; None where
    it needs more than ``most`` (or the difference is 0)."""
    if not np.isfinite(sd):
        return None
    return _first_n_detecting(lambda n: paired_mde(sd, n, alpha, power), difference, most)


def leave_one_seed_out(family: dict[str, tuple[dict[int, float], dict[int, float]]],
                       fixed: dict[str, tuple[float, float]] | None = None, alpha: float = 0.05,
                       paired: frozenset[str] = frozenset()) -> dict[str, bool]:  # fmt: skip
    """Which verdicts of a family no single seed decides.

    ``family`` maps each comparison over seeds to its two sides' values by seed ({seed: value});
    ``fixed`` maps the family's other comparisons (not over seeds, e.g. best-of-n's over prompts) to
    their (difference, p). The verdict of each comparison (:func:`verdict` after :func:`holm` over
    the whole family; Welch's test for those over seeds, :func:`paired_difference` for those named in
    ``paired``) is recomputed with each seed in turn left
    out of every side that has it; a comparison is robust when its verdict is the same in every such
    rerun as with all seeds. A fixed comparison can lose robustness only through Holm's ranks.
    """
    fixed = fixed or {}

    def verdicts(drop: int | None) -> dict[str, str]:
        def test(name, a, b):
            a, b = ({s: v for s, v in side.items() if s != drop} for side in (a, b))
            return paired_difference(a, b) if name in paired else welch_difference(list(a.values()), list(b.values()))

        tests = {name: test(name, a, b) for name, (a, b) in family.items()}
        pairs = {**{name: (d.diff, d.p) for name, d in tests.items()}, **fixed}
        adjusted = holm([p for _, p in pairs.values()])
        return {name: verdict(diff, q, alpha) for (name, (diff, _)), q in zip(pairs.items(), adjusted)}

    full = verdicts(None)
    seeds = sorted({s for a, b in family.values() for s in (*a, *b)})
    robust = dict.fromkeys(full, True)
    for seed in seeds:
        for name, outcome in verdicts(seed).items():
            robust[name] &= outcome == full[name]
    return robust
