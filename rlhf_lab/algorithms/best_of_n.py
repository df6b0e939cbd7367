"""Best-of-n sampling: unbiased estimators of the expected outcome and KL of best-of-n.

For one prompt with N ≥ n samples, picking the proxy-best of a uniformly random n-subset is
exactly best-of-n from the empirical distribution. Sorting by proxy, sample i (1-based rank) is
the best of a random n-subset with probability C(i−1, n−1) / C(N, n) (Gao et al. 2022 app. I;
Nakano et al. 2021), which gives an unbiased estimate of E[gold(best-of-n)] using all N samples.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln


def selection_weights(N: int, n: int) -> np.ndarray:
    """w_i = C(i−1, n−1) / C(N, n) for ranks i = 1..N (ascending proxy); sums to 1."""
    if not 1 <= n <= N:
        raise ValueError(f"need 1 <= n <= N, got n={n}, N={N}")
    i = np.arange(1, N + 1)
    log_comb = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)  # noqa: E731
    with np.errstate(invalid="ignore"):
        log_w = np.where(i >= n, log_comb(i - 1, n - 1) - log_comb(N, n), -np.inf)
    return np.exp(log_w)


def expected_best_of_n(proxy: np.ndarray, outcome: np.ndarray, n: int) -> float:
    """Unbiased E[outcome of the proxy-best of n] from N samples of one prompt.

    Ties in the proxy are broken by averaging the outcome over the tied group, so identical
    responses (equal proxy, equal outcome) are handled exactly.
    """
    proxy, outcome = np.asarray(proxy, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    order = np.argsort(proxy, kind="stable")
    proxy, outcome = proxy[order], outcome[order]
    # Average the outcome within groups of equal proxy: the pick among tied samples is random.
    _, start, counts = np.unique(proxy, return_index=True, return_counts=True)
    group_mean = np.repeat(np.add.reduceat(outcome, start) / counts, counts)
    return float(selection_weights(len(proxy), n) @ group_mean)


def kl_best_of_n_bound(n: int) -> float:
    """log n − (n − 1)/n: the KL of best-of-n when all outcomes are distinct (an upper bound)."""
    return math.log(n) - (n - 1) / n


def kl_best_of_n_exact(proxy: np.ndarray, n: int, decimals: int = 6) -> float:
    """KL(best-of-n ‖ base) for the empirical distribution of the N samples, ties included.

    The samples are grouped by proxy value (identical responses tie): group j with probability
    q_j and CDF F_j has best-of-n probability F_j^n − F_{j−1}^n (Beirami et al. 2024). With N
    distinct samples and N ≫ n this tends to :func:`kl_best_of_n_bound`; ties make it smaller.
    """
    values = np.round(np.asarray(proxy, dtype=np.float64), decimals)
    _, counts = np.unique(values, return_counts=True)  # ascending proxy
    q = counts / counts.sum()
    cdf = np.cumsum(q)
    prev = np.concatenate([[0.0], cdf[:-1]])
    p_bon = cdf**n - prev**n
    keep = p_bon > 0
    return float(np.sum(p_bon[keep] * np.log(p_bon[keep] / q[keep])))
