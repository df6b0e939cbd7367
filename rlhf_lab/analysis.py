"""Analyses the report runs: Gao et al. (2022) over-optimisation fits (pooled over seeds with
bootstrap intervals), values at a matched KL, and text diversity.

Gao et al., "Scaling Laws for Reward Model Overoptimization", eqs. 1–2, with d = √KL(π‖π_init):

    best-of-n:  R_bon(d) = d (α − β d)        peak at d* = α / (2β)
    RL:         R_RL(d)  = d (α − β log d)    peak at d* = exp(α/β − 1)

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
    if beta > 0:
        peak_d = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    else:
        peak_d = float("inf")  # no turnover within the form: gold keeps rising
    peak_gain = float(fn(np.array([peak_d]), alpha, beta)[0]) if math.isfinite(peak_d) else float("inf")
    se = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else [float("nan")] * 2
    return {
        "alpha": float(alpha), "beta": float(beta), "alpha_se": float(se[0]), "beta_se": float(se[1]),
        "r2": float(r2), "peak_d": float(peak_d), "peak_kl": float(peak_d**2), "peak_gain": peak_gain,
        "points": int(len(d)),
    }  # fmt: skip


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
    from rlhf_lab.stats import group_bootstrap

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
