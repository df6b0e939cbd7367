"""The experiment's declared endpoints and its multiplicity, power and robustness rules, against hand
computations."""

import math

import numpy as np
import pytest

from rlhf_lab.analysis.fits import (
    budget_crossing,
    gao_rl,
    misfit_reasons,
    quoted_peak,
    rl_fits,
    run_endpoints,
    values_on_d_grid,
)
from rlhf_lab.analysis.stats import (
    holm,
    leave_one_seed_out,
    minimum_detectable_difference,
    paired_mde,
    paired_seeds_needed,
    seeds_needed,
    verdict,
    welch_difference,
)


def test_holm_adjusts_by_rank_and_keeps_the_order_monotone():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_leaves_nan_out_of_the_family():
    adjusted = holm([0.5, float("nan"), 0.3])  # m = 2: 0.3·2 = 0.6, max(0.5·1, 0.6) = 0.6
    assert adjusted[0] == pytest.approx(0.6) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.6)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_verdict_names_a_supported_harm():
    assert verdict(-0.2, 0.01) == "lower" and verdict(0.2, 0.01) == "higher"
    assert verdict(0.2, 0.05) == "not supported" and verdict(0.2, float("nan")) == "not supported"


def test_minimum_detectable_difference_matches_the_hand_formula():
    # s = 1, n = 10 a side: se = √0.2 = 0.4472136, Welch df = 0.2² / (2 · 0.1²/9) = 18,
    # t_{0.975,18} = 2.100922, t_{0.8,18} = 0.862049 → 2.962971 · 0.4472136 = 1.325081
    assert minimum_detectable_difference(1.0, 10, 1.0, 10) == pytest.approx(1.325081, abs=1e-5)
    assert math.isnan(minimum_detectable_difference(1.0, 1, 1.0, 10))


def test_paired_mde_matches_the_hand_formula():
    # 10 pairs, s = 1, df 9: (t_{0.975,9} 2.262157 + t_{0.8,9} 0.883404) / √10 = 0.994714
    assert paired_mde(1.0, 10) == pytest.approx(0.994714, abs=1e-5)
    assert math.isnan(paired_mde(1.0, 1))


def test_rl_fits_name_each_seed_and_say_whether_its_peak_is_inside_its_data():
    d = np.linspace(0, 6, 25)
    turns = gao_rl(d, 1.0, 0.5)  # peak at d* = e^(1/0.5 − 1) = e ≈ 2.72 < 6: inside
    rises = gao_rl(d, 1.0, 0.1)  # peak at e^9 ≫ 6: beyond the data
    fits = rl_fits({7: (d, turns), 3: (d, rises), 11: (d, turns + 0.01)})
    assert [own["seed"] for own in fits["per_seed"]] == [7, 3, 11]
    assert [own["peak_in_range"] for own in fits["per_seed"]] == [True, False, True]
    assert fits["per_seed"][0]["peak_d"] == pytest.approx(math.e, rel=1e-6)
    assert fits["mean_curve"]["r2"] > 0.99


def test_seeds_needed_is_the_first_n_whose_detectable_difference_reaches_the_effect():
    # n = 10 detects 1.3251 (above); n = 9: se = √(2/9) = 0.4714, df 16: (2.1199 + 0.8647) · 0.4714 = 1.4069
    assert seeds_needed(1.0, 1.0, 1.33) == 10
    assert seeds_needed(1.0, 1.0, -1.33) == 10  # the size of a harm counts alike
    assert seeds_needed(1.0, 1.0, 1.40) == 10 and seeds_needed(1.0, 1.0, 1.41) == 9
    assert seeds_needed(1.0, 1.0, 0.0) is None


def test_leave_one_seed_out_flags_the_verdict_one_seed_decides():
    steady = ({0: 1.0, 1: 1.1, 2: 0.9, 3: 1.05}, {0: 0.0, 1: 0.1, 2: -0.1, 3: 0.05})
    # Seed 3's outlier keeps the difference unsupported; without it the rest agree closely.
    fragile = ({0: 0.2, 1: 0.25, 2: 0.15, 3: 2.0}, {0: 0.0, 1: 0.05, 2: -0.05, 3: 0.0})
    robust = leave_one_seed_out({"steady": steady, "fragile": fragile})
    assert robust == {"steady": True, "fragile": False}

    # By hand: with all seeds the fragile comparison is not supported; without seed 3 it is.
    def holm_verdicts(drop):
        d = [welch_difference([v for s, v in a.items() if s != drop], [v for s, v in b.items() if s != drop])
             for a, b in (steady, fragile)]
        return [verdict(x.diff, q) for x, q in zip(d, holm([x.p for x in d]))]

    assert holm_verdicts(None) == ["higher", "not supported"]
    assert holm_verdicts(3) == ["higher", "higher"]


def test_paired_seeds_needed_is_the_first_n_whose_paired_mde_reaches_the_effect():
    n = paired_seeds_needed(1.0, 1.0)
    assert paired_mde(1.0, n) <= 1.0 < paired_mde(1.0, n - 1)
    assert n == 10  # (t_.975,9 + t_.8,9)/√10 = (2.2622 + 0.8834)/3.1623 = 0.9947; n = 9: 1.0650
    assert paired_seeds_needed(1.0, 0.0) is None


def test_leave_one_seed_out_tests_paired_comparisons_paired():
    # The arm is the baseline plus 0.3 ± 0.01 in every seed, across a wide spread of seeds: unpaired
    # (Welch) cannot see it, paired it is supported whichever seed is left out.
    base = {0: 0.0, 1: 1.0, 2: -1.0, 3: 0.5, 4: -0.5}
    arm = {s: v + 0.3 + 0.01 * (-1) ** s for s, v in base.items()}
    assert leave_one_seed_out({"stop": (arm, base)}, paired=frozenset({"stop"})) == {"stop": True}
    assert verdict(welch_difference(list(arm.values()), list(base.values())).diff,
                   welch_difference(list(arm.values()), list(base.values())).p) == "not supported"


def test_leave_one_seed_out_keeps_fixed_comparisons_in_the_family():
    steady = ({0: 1.0, 1: 1.1, 2: 0.9, 3: 1.05}, {0: 0.0, 1: 0.1, 2: -0.1, 3: 0.05})
    robust = leave_one_seed_out({"steady": steady}, fixed={"bon": (0.3, 0.001)})
    assert robust == {"steady": True, "bon": True}


def test_run_endpoints_of_a_curve_that_turns_over():
    kl, gold, proxy = [0, 4, 9, 16, 25], [0.0, 0.5, 0.8, 0.4, 0.1], [0, 1, 2, 3, 4]
    e = run_endpoints(kl, gold, proxy, d_grid=[2, 2.5, 3, 4, 6])
    assert (e["gold_peak"], e["gold_peak_kl"], e["gold_final"], e["kl_final"]) == (0.8, 9, 0.1, 25)
    assert e["gold_drop"] == pytest.approx(0.7) and e["overoptimised"]
    # d = 2.5 is KL 6.25: 0.5 + (6.25 − 4)/(9 − 4) · (0.8 − 0.5) = 0.635; d = 6 (KL 36) is never reached
    assert e["gold_at_d2"] == 0.5 and e["gold_at_d2.5"] == pytest.approx(0.635) and e["gold_at_d4"] == 0.4
    assert math.isnan(e["gold_at_d6"])


def test_a_run_whose_proxy_fell_too_or_whose_gold_barely_fell_did_not_over_optimise():
    kl, gold = [0, 4, 9, 16], [0.0, 0.8, 0.5, 0.4]
    assert not run_endpoints(kl, gold, [0, 2, 1, 0.5], d_grid=[2])["overoptimised"]  # proxy fell with gold
    assert not run_endpoints(kl, [0.0, 0.8, 0.7, 0.65], [0, 1, 2, 3], d_grid=[2])["overoptimised"]  # drop 0.15
    assert values_on_d_grid(kl, gold, [1, 3]) == pytest.approx([0.2, 0.5])


def synthetic_runs():
    import pandas as pd

    rows = []
    for seed, (single, mean, b01) in enumerate([(0.5, 0.8, 0.4), (0.6, 0.9, 0.45), (0.7, 1.0, 0.5)]):
        base = {"condition": "clean", "adaptive": False, "seed": seed}
        rows += [{**base, "setting": "beta0", "beta": 0.0, "objective": "single", "gold_peak": single, "gold_at_budget": 0.1 * seed},
                 {**base, "setting": "beta0_mean", "beta": 0.0, "objective": "mean", "gold_peak": mean, "gold_at_budget": 0.0},
                 {**base, "setting": "beta01", "beta": 0.1, "objective": "single", "gold_peak": b01, "gold_at_budget": b01}]
    return pd.DataFrame(rows)


def test_the_primary_family_is_one_endpoint_per_question_under_holm():
    import pandas as pd

    from rlhf_lab.analysis.findings import primary_family

    bon = pd.DataFrame([{"condition": "clean", "objective": o, "n": 64, "prompt": i, "gold": g}
                        for o, golds in (("single", [0, 0, 0, 0]), ("mean", [0.1, 0.2, 0.3, 0.4]))
                        for i, g in enumerate(golds)])
    family = primary_family(synthetic_runs(), bon, "clean", alpha=0.05).set_index("key")
    assert set(family.index) == {"ensemble.clean.mean", "beta.0.1", "bon.clean.mean"}
    ens, beta, best = family.loc["ensemble.clean.mean"], family.loc["beta.0.1"], family.loc["bon.clean.mean"]
    assert ens["endpoint"] == "gold_peak" and ens["diff"] == pytest.approx(0.3)  # 0.9 − 0.6
    assert beta["endpoint"] == "gold_at_budget" and beta["diff"] == pytest.approx(0.45 - 0.1)
    # Best-of-n is paired over prompts: every difference positive, 2⁴ sign flips, two-sided p = 2/16.
    assert best["diff"] == pytest.approx(0.25) and best["p"] == pytest.approx(0.125)
    assert list(family["p_holm"]) == pytest.approx(list(holm(family["p"])))
    assert (family["family_size"] == 3).all() and family["level"].iloc[0] == pytest.approx(0.05 / 3)
    expected = minimum_detectable_difference(0.1, 3, 0.1, 3, alpha=0.05 / 3)  # both sides have s = 0.1
    assert ens["mde"] == pytest.approx(expected)
    assert ens["verdict"] == verdict(ens["diff"], ens["p_holm"])


def test_replication_sets_each_verdict_from_each_seed_set_alone():
    import pandas as pd

    from rlhf_lab.analysis.findings import replication

    runs = synthetic_runs()
    later = runs.assign(seed=runs["seed"] + 3)
    later.loc[later["objective"] == "mean", "gold_peak"] -= 0.3  # no gain in the second set
    table, metrics = replication(pd.concat([runs, later]), None, "clean", 0.05, [(0, 1, 2), (3, 4, 5)])
    rows = table.set_index("comparison")
    # Set 0: +0.3 with s = 0.1 a side, Welch p 0.021; Holm over its two comparisons 0.026 (β's 0.013 · 2,
    # the running maximum): supported.
    assert metrics["replication.ensemble.clean.mean.set0.verdict"] == "higher"
    assert metrics["replication.ensemble.clean.mean.set1.verdict"] == "not supported"  # +0.000 in set 1
    assert rows.loc["ensemble.clean.mean", "agree"] == "no" and rows.loc["beta.0.1", "agree"] == "yes"
    assert not metrics["replication.ensemble.clean.mean.agree"] and metrics["replication.beta.0.1.agree"]


def test_budget_crossing_interpolates_where_the_run_passes_the_budget_and_censors_a_run_that_never_does():
    # 30 → 90 nats over one evaluation interval: at 50, a third of the way, 0.7 + (20/60)·(−0.5 − 0.7) = 0.3
    assert budget_crossing([0, 10, 30, 90], [0.0, 0.5, 0.7, -0.5], 50) == (pytest.approx(0.3), 50.0, True)
    # the iteration cap stopped it at KL 26: read there, marked as not reaching the budget
    assert budget_crossing([0, 10, 26], [0.0, 0.5, 0.6], 50) == (0.6, 26.0, False)
    assert budget_crossing([0, 10, 26], [0.0, 0.5, 0.6], None) == (0.6, 26.0, True)  # no budget: the last evaluation


def test_run_endpoints_are_read_on_the_curve_up_to_the_budget():
    kl, gold, proxy = [0, 4, 9, 16, 25, 100], [0.0, 0.5, 0.8, 0.4, 0.1, -2.0], [0, 1, 2, 3, 4, 10]
    e = run_endpoints(kl, gold, proxy, d_grid=[2], kl_budget=50)
    # 25 → 100 crosses 50 a third of the way: gold 0.1 + (1/3)(−2.1) = −0.6, proxy 4 + (1/3)·6 = 6
    assert e["gold_at_budget"] == pytest.approx(-0.6) and e["proxy_at_budget"] == pytest.approx(6.0)
    assert (e["kl_at_budget"], e["budget_reached"]) == (50.0, True)
    assert e["gold_drop"] == pytest.approx(0.8 + 0.6) and e["overoptimised"]
    assert (e["gold_final"], e["kl_final"]) == (-2.0, 100.0)  # where it landed, kept beside
    # An overshoot whose last evaluation is its best: the peak is read at the budget, not 10 nats past it.
    jump = run_endpoints([0, 10, 60], [0.0, 0.2, 1.0], [0, 1, 2], d_grid=[], kl_budget=50)
    assert jump["gold_peak"] == pytest.approx(0.2 + 0.8 * 40 / 50) and jump["gold_peak_kl"] == 50.0


def test_the_peak_rule_quotes_a_peak_only_from_a_fit_that_holds_inside_the_data():
    good = {"r2": 0.8, "alpha": 1.0, "beta": 0.5, "peak_d": math.e, "peak_kl": math.e**2}  # exp(1/0.5 − 1) = e
    assert quoted_peak(good, (1.0, 5.0)) == (pytest.approx(math.e**2), "")
    assert quoted_peak({**good, "r2": 0.159}, (1.0, 5.0))[0] is None
    assert "does not fit (R² = 0.159, under 0.5)" in quoted_peak({**good, "r2": 0.159}, (1.0, 5.0))[1]
    assert "no peak" in quoted_peak({**good, "beta": -0.1, "peak_d": float("inf")}, (1.0, 5.0))[1]
    assert "beyond the data" in quoted_peak(good, (1.0, 2.0))[1]
    assert "before the first evaluation" in quoted_peak({**good, "peak_d": 0.77, "peak_kl": 0.6}, (1.5, 7.0))[1]


def test_misfit_reasons_name_the_slow_start_and_the_cliffs_they_measure():
    fit = {"alpha": 0.6, "beta": 0.2}
    d = np.array([0.0, 1.0, 1.5, 3.0, 6.0])
    slow = (d, gao_rl(d, 0.6, 0.2) - np.array([0, 0.3, 0.3, 0, 0]))  # 0.3 below the form at d = 1 and 1.5
    reasons = misfit_reasons([slow, (np.array([0.0, 2.0, 6.0]), gao_rl(np.array([0.0, 2.0, 6.0]), 0.6, 0.2))], fit)
    assert reasons[0].startswith("slow start") and "0.30 less" in reasons[0]  # d = 1 and 1.5, both 0.3 below
    # KL 4 → 36 is a 32-nat jump in one interval (≥ 20); the slow curve's largest is 36 − 9 = 27, too
    assert reasons[1] == "cliffs: 2 of 2 seeds jumped ≥ 20 nats of KL between two evaluations"
    assert misfit_reasons([(np.array([0.0, 1.0, 2.0]), gao_rl(np.array([0.0, 1.0, 2.0]), 0.6, 0.2))], fit) == []


def test_rl_fits_quote_no_peak_for_a_seed_whose_curve_keeps_rising():
    d = np.linspace(0, 9, 19)  # the form's peak d* = exp(0.6/0.2 − 1) = 7.39 lies inside
    fit = rl_fits({0: (d, gao_rl(d, 0.6, 0.2)), 1: (d, 0.3 * d)})  # seed 1: a straight line, no turnover
    by_seed = {s["seed"]: s for s in fit["per_seed"]}
    assert by_seed[0]["quoted_peak_kl"] == pytest.approx(math.exp(0.6 / 0.2 - 1) ** 2)
    assert by_seed[1]["quoted_peak_kl"] is None and by_seed[1]["why_no_peak"]
