"""Intervals and tests against hand computations."""

import math

import numpy as np
import pytest

from rlhf_lab.analysis.fits import fit_gao_over_seeds, gao_rl, value_at_kl
from rlhf_lab.analysis.proportions import wilson_interval
from rlhf_lab.analysis.stats import (
    bootstrap_mean_interval,
    group_bootstrap,
    paired_difference,
    permutation_p,
    t_interval,
    welch_difference,
)


def test_t_interval_of_a_known_sample():
    # mean 2, s = 1, n = 3: half-width t_{2, 0.975} · 1/√3 = 4.302653 / 1.732051 = 2.484138
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.ci_low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert iv.ci_high == pytest.approx(2 + 2.484138, abs=1e-6)


def test_t_interval_of_one_value_has_no_bounds_and_ignores_nan():
    iv = t_interval([5.0, float("nan")])
    assert iv.mean == 5.0 and iv.n == 1 and math.isnan(iv.ci_low) and math.isnan(iv.ci_high)


def test_welch_difference_matches_the_hand_formula():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    # diff −4; s²/n: 1/3 and 4/3, se = √(5/3) = 1.290994; Welch–Satterthwaite df = (5/3)² /
    # ((1/3)²/2 + (4/3)²/2) = 2.777778/0.944444 = 2.941176
    d = welch_difference(a, b)
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    from scipy import stats

    half = stats.t.ppf(0.975, df) * se
    assert d.diff == -4.0
    assert d.ci_low == pytest.approx(-4 - half) and d.ci_high == pytest.approx(-4 + half)
    assert d.p == pytest.approx(2 * stats.t.sf(4 / se, df))
    assert df == pytest.approx(2.941176, abs=1e-6)


def test_paired_difference_matches_the_hand_formula_over_shared_seeds():
    from scipy import stats

    a = {0: 0.8, 1: 0.7, 2: 0.9, 3: 0.75, 9: 5.0}  # seed 9 has no partner: left out
    b = {0: 0.2, 1: 0.3, 2: 0.1, 3: 0.30}
    # differences 0.6, 0.4, 0.8, 0.45: mean 0.5625, sd 0.18428, se 0.09214, df 3
    x = np.array([0.6, 0.4, 0.8, 0.45])
    se = x.std(ddof=1) / 2
    d = paired_difference(a, b)
    assert d.diff == pytest.approx(0.5625) and (d.n_a, d.n_b) == (4, 4)
    half = stats.t.ppf(0.975, 3) * se
    assert d.ci_low == pytest.approx(0.5625 - half) and d.ci_high == pytest.approx(0.5625 + half)
    assert d.p == pytest.approx(2 * stats.t.sf(0.5625 / se, 3))
    assert d.p_permutation == pytest.approx(2 / 16)  # all four signs alike: 2 of the 16 flips


def test_permutation_p_of_separable_groups_is_the_exact_minimum():
    # 3 vs 3 completely separated: only the observed split and its mirror are as extreme,
    # 2 of C(6, 3) = 20 arrangements.
    assert permutation_p([10.0, 11.0, 12.0], [0.0, 1.0, 2.0]) == pytest.approx(2 / 20)


def test_permutation_p_of_identical_groups_is_one():
    assert permutation_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_paired_permutation_flips_signs():
    # Four positive differences: 2 of 2⁴ sign patterns are as extreme (all + or all −).
    assert permutation_p([2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0], paired=True) == pytest.approx(2 / 16)


def test_bootstrap_mean_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    a, b = bootstrap_mean_interval(small), bootstrap_mean_interval(large)
    assert a.ci_low < a.mean < a.ci_high and b.ci_low < b.mean < b.ci_high
    assert (b.ci_high - b.ci_low) < (a.ci_high - a.ci_low) / 5
    # ≈ ±1.96 σ/√n for a normal sample
    assert b.ci_high - b.ci_low == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.15)


def test_group_bootstrap_resamples_whole_groups():
    # Every group is constant: a resample's pooled mean is a mean of group values, so the interval
    # lies within [min, max] of the group values and never outside.
    groups = [np.full(5, 1.0), np.full(5, 2.0), np.full(5, 3.0)]
    (low, high), = group_bootstrap(groups, lambda g: [np.concatenate(g).mean()], n_resamples=500)
    assert 1.0 <= low < 2.0 < high <= 3.0


def test_value_at_kl_interpolates_at_the_first_crossing():
    kl, gold = [0.0, 4.0, 8.0, 6.0, 12.0], [0.0, 0.4, 0.8, 0.1, -1.0]
    assert value_at_kl(kl, gold, 6.0) == pytest.approx(0.6)  # between 4 and 8, not the later 6
    assert value_at_kl(kl, gold, 0.0) == 0.0
    assert math.isnan(value_at_kl(kl, gold, 20.0))


def test_gao_fit_over_seeds_recovers_the_coefficients_with_intervals():
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(4):
        d = np.linspace(0.2, 8, 15)
        runs.append((d, gao_rl(d, 0.6, 0.3) + rng.normal(scale=0.05, size=d.size)))
    fit = fit_gao_over_seeds(runs, "rl", n_resamples=200)
    assert fit["n_seeds"] == 4 and len(fit["per_seed"]) == 4
    assert fit["alpha_ci"][0] < 0.6 < fit["alpha_ci"][1]
    assert fit["beta_ci"][0] < 0.3 < fit["beta_ci"][1]
    assert fit["alpha"] == pytest.approx(0.6, abs=0.05) and fit["r2"] > 0.9


def test_the_stage_summary_gives_a_constant_no_interval():
    from rlhf_lab.runtime.stage import summary

    text = summary({"steps": {"mean": 80, "ci_low": 80, "ci_high": 80, "n": 3},
                    "gold_final": {"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75, "n": 3}})
    assert text.splitlines() == ["gold_final: 0.5 [0.25, 0.75] (n=3)", "steps: 80 (all 3)"]


def test_kl_summaries_over_seeds_stay_inside_the_support():
    from pipelines.ppo import seed_summary

    # A t interval over these reaches below 0 (mean 75, s 108: 75 − 4.30 · 62.4 < 0); KL cannot.
    kl = seed_summary({0: {"kl_final": 10.0}, 1: {"kl_final": 200.0}, 2: {"kl_final": 15.0}})["kl_final"]
    assert kl["mean"] == 75.0 and 10.0 <= kl["ci_low"] <= kl["ci_high"] <= 200.0
    assert t_interval([10.0, 200.0, 15.0]).ci_low < 0


def test_wilson_interval_matches_the_score_formula_and_stays_inside_zero_one():
    z = 1.959963984540054

    def by_hand(k, n):  # Wilson (1927): (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)
        p = k / n
        centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)

    five = wilson_interval(5, 5)
    assert (five.ci_low, five.ci_high) == (pytest.approx(0.5655, abs=1e-4), pytest.approx(1.0))
    for k, n in ((5, 5), (15, 20), (0, 10), (3, 5)):
        iv = wilson_interval(k, n)
        assert (iv.ci_low, iv.ci_high) == pytest.approx(by_hand(k, n))
    assert str(wilson_interval(15, 20)) == "15 of 20 [95 % CI 53–89 %]"
