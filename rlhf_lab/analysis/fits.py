"""Analyses the report runs: Gao et al. (2022) over-optimisation fits (pooled over seeds with
bootstrap intervals), values at a matched KL, and text diversity.

Gao et al., "Scaling Laws for Reward Model Overoptimization", eqs. 1–2, with d = √KL(π‖π_init):

    best-of-n:  R_bon(d) = d (α − β d)        peak at d* = α / (2β)
    RL:         R_RL(d)  = d (α − β log d)    peak at d* = exp(α/β − 1)
    iterated:   R_k(d)   = d (α − β log d + β log k)   k rounds, each travelling d/k on a fresh RM

R is the gold score relative to the initial policy's, so R(0) = 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import curve_fit


def gao_bon(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return d * (alpha - beta * d)


def gao_rl(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    # d·log d → 0 as d → 0: define the form there by continuity.
    log_d = np.log(np.where(d > 0, d, 1.0))
    return d * (alpha - beta * log_d)


FORMS = {"bon": gao_bon, "rl": gao_rl}


def gao_rl_iterated(d: np.ndarray, alpha: float, beta: float, k) -> np.ndarray:
    """Gao et al.'s form for k rounds of iterated RLHF: each round travels d/k against a fresh reward
    model and gains the RL form's (d/k)(α − β log(d/k)), so the k rounds together gain
    d(α − β log d + β log k): the single-round curve lifted by β d log k."""
    d, k = np.asarray(d, dtype=np.float64), np.asarray(k, dtype=np.float64)
    return k * gao_rl(d / k, alpha, beta)


def fit_gao_rl_iterated(d, gain, k) -> dict:
    """Least squares of the iterated form to (d, gain) points, each with its round count k (linear in
    α and β: gain = α d − β d log(d/k)); α, β, R² and the number of points."""
    d, gain, k = (np.asarray(x, dtype=np.float64) for x in (d, gain, k))
    keep = np.isfinite(d) & np.isfinite(gain) & np.isfinite(k) & (k > 0)
    d, gain, k = d[keep], gain[keep], k[keep]
    log_ratio = np.log(np.where(d > 0, d / k, 1.0))  # d log(d/k) → 0 as d → 0
    design = np.column_stack([d, -d * log_ratio])
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    residual = gain - design @ np.array([alpha, beta])
    total = np.sum((gain - gain.mean()) ** 2)
    return {"alpha": float(alpha), "beta": float(beta), "points": int(len(d)),
            "r2": float(1 - np.sum(residual**2) / total) if total > 0 else float("nan")}  # fmt: skip


def fit_gao(d: np.ndarray, gain: np.ndarray, form: str) -> dict:
    """Least-squares fit of one Gao form to (d, gold gain) points.

    Returns α, β, their standard errors (from the fit's covariance), R², the predicted peak
    (d*, KL* = d*², gain*) and the number of points. The forms are linear in (α, β), so the fit
    is exact least squares; curve_fit also gives the covariance.
    """
    d, gain = np.asarray(d, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    keep = np.isfinite(d) & np.isfinite(gain)
    d, gain = d[keep], gain[keep]
    fn = FORMS[form]
    (alpha, beta), cov = curve_fit(fn, d, gain, p0=(0.1, 0.01))
    residual = gain - fn(d, alpha, beta)
    total = np.sum((gain - gain.mean()) ** 2)
    r2 = 1 - np.sum(residual**2) / total if total > 0 else float("nan")
    if beta > 0:  # a near-zero β_G puts the RL peak past any float: no turnover in reach
        peak_d = alpha / (2 * beta) if form == "bon" else (math.exp(alpha / beta - 1) if alpha / beta < 700 else math.inf)
    else:
        peak_d = float("inf")  # no turnover within the form: gold keeps rising
    peak_gain = float(fn(np.array([peak_d]), alpha, beta)[0]) if math.isfinite(peak_d) else float("inf")
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else [float("nan")] * 2
    return {
        "alpha": float(alpha), "beta": float(beta), "alpha_se": float(se[0]), "beta_se": float(se[1]),
        "r2": float(r2), "peak_d": float(peak_d), "peak_kl": float(peak_d**2), "peak_gain": peak_gain,
        "points": int(len(d)),
    }  # fmt: skip


# A fit's peak is quoted only when the form explains the curve this well (issue 34): below it the
# form's peak is a property of the least-squares line, not of the runs.
MIN_FIT_R2 = 0.5


def quoted_peak(fit: dict, d_range: tuple[float, float], min_r2: float = MIN_FIT_R2) -> tuple[float | None, str]:
    """(the fitted peak's KL, or None; why not, in words). A peak is quoted only when the fit explains
    the data (R² ≥ ``min_r2``), its curve turns over (β_G > 0) and the peak lies inside the measured
    distances ``d_range`` = (first evaluated d > 0, last d reached)."""
    r2, low, high = fit.get("r2", float("nan")), *d_range
    if not np.isfinite(r2) or r2 < min_r2:
        return None, f"the form does not fit (R² = {r2:.3f}, under {min_r2:g})"
    if fit["beta"] <= 0 or not math.isfinite(fit["peak_d"]):
        return None, "the fitted curve has no peak (β_G ≤ 0: gold keeps rising within the form)"
    if fit["peak_d"] > high:
        return None, f"the fitted peak (KL {fit['peak_kl']:.1f}) lies beyond the data (KL ≤ {high**2:.1f} measured)"
    if fit["peak_d"] < low:
        return None, f"the fitted peak (KL {fit['peak_kl']:.2f}) lies before the first evaluation (KL {low**2:.1f})"
    return fit["peak_kl"], ""


def misfit_reasons(curves: list[tuple[np.ndarray, np.ndarray]], fit: dict, form: str = "rl",
                   slow_start_d: float = 2.0, cliff_kl: float = 20.0) -> list[str]:  # fmt: skip
    """Why Gao's form may miss these (d, gain) curves, as measured: a slow start (below
    ``slow_start_d`` the curves gain less than the form says, on average) and cliffs (a seed whose KL
    grew by ``cliff_kl`` nats or more between two evaluations: the form has no jump)."""
    reasons = []
    d = np.concatenate([np.asarray(c[0], dtype=np.float64) for c in curves])
    gain = np.concatenate([np.asarray(c[1], dtype=np.float64) for c in curves])
    early = (d > 0) & (d < slow_start_d) & np.isfinite(gain)
    if early.any():
        residual = float(np.mean(gain[early] - FORMS[form](d[early], fit["alpha"], fit["beta"])))
        if residual < 0:
            reasons.append(f"slow start: below d = {slow_start_d:g} the runs gain {-residual:.2f} less than the form, "
                           "on average")  # fmt: skip
    cliffs = sum(bool(np.any(np.diff(np.asarray(c[0], dtype=np.float64) ** 2) >= cliff_kl)) for c in curves)
    if cliffs:
        reasons.append(f"cliffs: {cliffs} of {len(curves)} seeds jumped ≥ {cliff_kl:g} nats of KL between two "
                       "evaluations")  # fmt: skip
    return reasons


def measured_range(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(the smallest positive d evaluated, the largest d reached) over (d, value) curves."""
    d = np.concatenate([np.asarray(c[0], dtype=np.float64) for c in curves])
    positive = d[np.isfinite(d) & (d > 0)]
    return (float(positive.min()), float(positive.max())) if len(positive) else (0.0, 0.0)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over a set of texts."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def value_at_kl(kl: np.ndarray, value: np.ndarray, target: float) -> float:
    """``value`` where a run's trajectory first reaches KL = ``target``, linearly interpolated
    between the two evaluations around the crossing; NaN if the run never gets there.

    ``kl`` and ``value`` are in evaluation order (KL mostly grows, but need not be monotone).
    """
    kl, value = np.asarray(kl, dtype=np.float64), np.asarray(value, dtype=np.float64)
    if len(kl) == 0 or not np.isfinite(target):
        return float("nan")
    if kl[0] >= target:
        return float(value[0])
    above = np.nonzero(kl >= target)[0]
    if len(above) == 0:
        return float("nan")
    i = above[0]
    share = (target - kl[i - 1]) / (kl[i] - kl[i - 1])
    return float(value[i - 1] + share * (value[i] - value[i - 1]))


def fit_gao_over_seeds(runs: list[tuple[np.ndarray, np.ndarray]], form: str, n_resamples: int = 1000,
                       seed: int = 0) -> dict:  # fmt: skip
    """The Gao form fitted to the pooled (d, gain) points of several seeds, with 95 % intervals for
    α and β from a bootstrap over seeds (each resample redraws whole runs), and each seed's own fit.
    """
    from rlhf_lab.analysis.stats import group_bootstrap

    def pooled(group: list[tuple[np.ndarray, np.ndarray]]) -> dict:
        return fit_gao(np.concatenate([d for d, _ in group]), np.concatenate([g for _, g in group]), form)

    fit = pooled(runs)
    fit["n_seeds"] = len(runs)
    fit["per_seed"] = [pooled([run]) for run in runs]
    if len(runs) >= 2:
        (alpha_ci, beta_ci) = group_bootstrap(runs, lambda g: [pooled(g)[k] for k in ("alpha", "beta")],
                                              n_resamples=n_resamples, seed=seed)  # fmt: skip
        fit["alpha_ci"], fit["beta_ci"] = [float(x) for x in alpha_ci], [float(x) for x in beta_ci]
    else:
        fit["alpha_ci"] = fit["beta_ci"] = [float("nan"), float("nan")]
    return fit


def values_on_d_grid(kl: np.ndarray, value: np.ndarray, d_grid) -> np.ndarray:
    """``value`` where a run first reaches each distance d = √KL of ``d_grid`` (NaN beyond its reach)."""
    return np.array([value_at_kl(kl, value, d * d) for d in d_grid])


def budget_crossing(kl, value, budget: float | None) -> tuple[float, float, bool]:
    """(value, KL, reached) where a run's budget ends it: where its curve first reaches KL = ``budget``,
    linearly interpolated between the two evaluations around the crossing; a run that never reaches it
    (stopped by the iteration cap) ends at its last evaluation, at the KL it reached, ``reached`` false
    (a censored endpoint). With no budget, every run ends at its last evaluation.

    A run stops at its first evaluation at or past the budget, and between two evaluations the policy
    can travel tens of nats: read there, runs would be compared at uneven distances."""
    kl, value = np.asarray(kl, dtype=np.float64), np.asarray(value, dtype=np.float64)
    if budget is not None and np.nanmax(kl) >= budget:
        return value_at_kl(kl, value, budget), float(budget), True
    return float(value[-1]), float(kl[-1]), budget is None


def curve_to_budget(kl, *values, budget: float | None):
    """The evaluations before the first that reaches the budget, then the point at the budget itself
    (interpolated): (kl, *values) of the run as its budget ends it. Unchanged without a budget or when
    the run never reaches it."""
    kl = np.asarray(kl, dtype=np.float64)
    values = [np.asarray(v, dtype=np.float64) for v in values]
    if budget is None or not np.any(kl >= budget):
        return (kl, *values)
    first = int(np.nonzero(kl >= budget)[0][0])
    ends = [budget_crossing(kl, v, budget)[0] for v in values]
    return (np.append(kl[:first], float(budget)), *[np.append(v[:first], end) for v, end in zip(values, ends)])


def run_endpoints(kl, gold, proxy, d_grid, min_drop: float = 0.2, kl_budget: float | None = None) -> dict:
    """The declared endpoints of one run's evaluation curve (evaluation order, KL in nats), read on the
    curve up to its KL budget (:func:`curve_to_budget`), so that every run is read at one distance:

    gold at the budget (``gold_at_budget``: interpolated where the run crosses it; for a run the
    iteration cap stopped short of it, its last gold, with ``budget_reached`` false and
    ``kl_at_budget`` the KL it reached), gold peak and the KL there, gold drop (peak − gold at the
    budget), gold at each distance of ``d_grid`` (``gold_at_d<d>``), and whether the run
    over-optimised: gold fell at least ``min_drop`` from its peak while the proxy it was trained on
    ended above its value at that peak. ``gold_final`` and ``kl_final`` stay the last evaluation's,
    wherever it landed.
    """
    kl, gold, proxy = (np.asarray(x, dtype=np.float64) for x in (kl, gold, proxy))
    out = {"gold_final": float(gold[-1]), "kl_final": float(kl[-1])}
    kl_cut, gold_cut, proxy_cut = curve_to_budget(kl, gold, proxy, budget=kl_budget)
    at_budget = float(gold_cut[-1])  # the curve ends where the budget ends the run (budget_crossing)
    reached = kl_budget is None or bool(kl_cut[-1] >= kl_budget)
    peak = int(np.nanargmax(gold_cut))
    out.update({"gold_at_budget": at_budget, "kl_at_budget": float(kl_cut[-1]), "budget_reached": reached,
                "gold_peak": float(gold_cut[peak]), "gold_peak_kl": float(kl_cut[peak]),
                "gold_drop": float(gold_cut[peak] - at_budget), "proxy_at_budget": float(proxy_cut[-1])})  # fmt: skip
    out["overoptimised"] = bool(out["gold_drop"] >= min_drop and proxy_cut[-1] > proxy_cut[peak])
    for d, g in zip(d_grid, values_on_d_grid(kl, gold, d_grid)):
        out[f"gold_at_d{d:g}"] = float(g)
    return out


def mean_curve(runs: list[tuple[np.ndarray, np.ndarray]], step: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds' (d, value) curves interpolated on one d grid (where each first reaches d) and averaged
    where at least half of them, and two, reach it: (grid, mean, seeds behind each mean)."""
    top = max(float(np.nanmax(d)) for d, _ in runs)
    grid = np.arange(0.0, top + 1e-9, step)
    values = np.array([values_on_d_grid(np.asarray(d) ** 2, v, grid) for d, v in runs])  # (seeds, grid)
    count = np.isfinite(values).sum(axis=0)
    keep = count >= max(2, math.ceil(len(runs) / 2))
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0) if len(runs) else grid * np.nan
    return grid[keep], mean[keep], count[keep]


def rl_fits(runs: dict[int, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> dict:
    """The RL form fitted three ways to β = 0 runs' (d, gold gain) curves, given by seed id: pooled over
    seeds (with the bootstrap over seeds of :func:`fit_gao_over_seeds`), to the mean curve on a common
    d grid, and to each seed alone, with whether each seed's fitted peak lies inside the distance it
    reached."""
    curves = list(runs.values())
    fit = fit_gao_over_seeds(curves, "rl", seed=seed)
    grid, mean, _ = mean_curve(curves)
    fit["mean_curve"] = fit_gao(grid, mean, "rl") if len(grid) >= 3 else None
    for own, run_seed, curve in zip(fit["per_seed"], runs, curves):
        own["seed"] = int(run_seed)
        own["max_kl"] = float(np.nanmax(curve[0]) ** 2)
        own["peak_in_range"] = bool(math.isfinite(own["peak_d"]) and own["peak_d"] <= np.nanmax(curve[0]))
        own["quoted_peak_kl"], own["why_no_peak"] = quoted_peak(own, measured_range([curve]))
    fit["d_range"] = measured_range(curves)
    fit["quoted_peak_kl"], fit["why_no_peak"] = quoted_peak(fit, fit["d_range"])
    fit["misfit"] = misfit_reasons(curves, fit) if fit["quoted_peak_kl"] is None else []
    return fit
