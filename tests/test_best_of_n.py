"""Best-of-n estimators against brute-force enumeration and hand computations."""

import itertools
import math

import numpy as np
import pytest

from rlhf_lab.algorithms.best_of_n import (
    expected_best_of_n,
    kl_best_of_n_bound,
    kl_best_of_n_exact,
    selection_weights,
)
from rlhf_lab.analysis.fits import distinct_n, fit_gao, gao_bon, gao_rl


def brute_force(proxy, outcome, n):
    """Average over every n-subset of the outcome of its proxy-best element."""
    values = []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(subset, key=lambda i: proxy[i])
        values.append(outcome[best])
    return float(np.mean(values))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
def test_unbiased_estimator_equals_enumeration(n):
    rng = np.random.default_rng(n)
    proxy, gold = rng.normal(size=6), rng.normal(size=6)
    assert expected_best_of_n(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n))


def test_selection_weights():
    w = selection_weights(10, 3)
    assert w.sum() == pytest.approx(1.0)
    assert np.allclose(selection_weights(5, 1), 0.2)
    assert selection_weights(5, 5).tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        selection_weights(3, 4)


def test_ties_average_the_tied_outcomes():
    # Two samples tie on the proxy at the top: best-of-N picks either with equal chance.
    assert expected_best_of_n([1.0, 2.0, 2.0], [0.0, 1.0, 3.0], 3) == pytest.approx(2.0)


def test_exact_kl_by_hand_and_against_the_bound():
    # N = 2 distinct samples, n = 2: best-of-2 puts 1/4 on the worse and 3/4 on the better.
    assert kl_best_of_n_exact([0.1, 0.9], 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert kl_best_of_n_exact(np.arange(100000.0), 1) == pytest.approx(0.0, abs=1e-9)
    # Many distinct samples: the exact value approaches log n - (n-1)/n.
    assert kl_best_of_n_exact(np.arange(100000.0), 16) == pytest.approx(kl_best_of_n_bound(16), rel=1e-3)
    # Identical samples: best-of-n is the base distribution.
    assert kl_best_of_n_exact(np.ones(50), 8) == pytest.approx(0.0)
    # Ties lower the KL below the bound.
    assert kl_best_of_n_exact(np.repeat(np.arange(5.0), 20), 8) < kl_best_of_n_bound(8)


def test_gao_fits_recover_known_coefficients():
    d = np.linspace(0.05, 6, 40)
    rl = fit_gao(d, gao_rl(d, 0.5, 0.3), "rl")
    assert rl["alpha"] == pytest.approx(0.5, abs=1e-6) and rl["beta"] == pytest.approx(0.3, abs=1e-6)
    assert rl["r2"] == pytest.approx(1.0)
    grid = np.linspace(0.01, 20, 200001)
    assert rl["peak_d"] == pytest.approx(grid[np.argmax(gao_rl(grid, 0.5, 0.3))], abs=1e-3)
    bon = fit_gao(d, gao_bon(d, 0.4, 0.05) + np.random.default_rng(0).normal(0, 0.01, d.size), "bon")
    assert bon["alpha"] == pytest.approx(0.4, abs=0.02) and bon["beta"] == pytest.approx(0.05, abs=0.01)
    assert bon["peak_d"] == pytest.approx(bon["alpha"] / (2 * bon["beta"]))
    assert 0.95 < bon["r2"] <= 1 and bon["alpha_se"] > 0


def test_distinct_n_by_hand():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)  # ab ba ab | ab bc
