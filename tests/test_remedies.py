"""The remedies' math against hand computations: early-stopping rules, their endpoints, and the
remedies' family (baselines, Holm within each endpoint, robustness), Gao et al.'s iterated form."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rlhf_lab.algorithms.early_stopping import held_out_members, patience_stop, stop_endpoints
from rlhf_lab.analysis.fits import fit_gao_rl_iterated, gao_rl, gao_rl_iterated
from rlhf_lab.analysis.remedies import (
    iterated_form,
    remedies_family,
    remedies_metrics,
    remedy_arms,
    warm_best_of_n,
)


def test_patience_stop_fires_after_patience_reads_without_improvement_and_returns_the_best():
    signal = [0.1, 0.3, 0.5, 0.4, 0.45, 0.2, 0.9]
    stop = patience_stop(signal, patience=2)
    # best 0.5 at index 2; 0.4 (1), 0.45 (2) → fires at index 4; the 0.9 later is never seen
    assert (stop.stop, stop.chosen, stop.fired, stop.checks) == (4, 2, True, 5)
    assert patience_stop(signal, patience=3).stop == 5
    never = patience_stop([0.1, 0.2, 0.3], patience=2)
    assert (never.stop, never.chosen, never.fired) == (2, 2, False)


def test_patience_stop_reads_every_kth_evaluation_and_skips_nan():
    signal = [0.1, 9.0, 0.5, 9.0, 0.4, 9.0, 0.3, 9.0]
    # reads indices 0, 2, 4, 6 only: best 0.5 at 2, then 0.4, 0.3 → stop at 6 after 4 checks
    stop = patience_stop(signal, patience=2, check_every=2)
    assert (stop.stop, stop.chosen, stop.checks) == (6, 2, 4)
    assert patience_stop([0.1, float("nan"), 0.05, 0.04], patience=2).chosen == 0
    # min_delta: a rise smaller than it is no improvement
    assert patience_stop([0.5, 0.51, 0.52], patience=2, min_delta=0.05).stop == 2
    with pytest.raises(ValueError):
        patience_stop([0.1], patience=0)


def test_held_out_members_average_the_members_outside_the_objective():
    members = np.array([[1.0, 2.0, 4.0], [3.0, 0.0, 2.0]])
    assert held_out_members(members, [0]).tolist() == [3.0, 1.0]
    assert held_out_members(members, [0, 2]).tolist() == [2.0, 0.0]
    with pytest.raises(ValueError):
        held_out_members(members, [0, 1, 2])


def test_stop_endpoints_give_the_returned_policy_regret_and_the_gold_spent():
    gold, kl = [0.1, 0.6, 0.8, 0.7, 0.9, 0.2], [0, 1, 4, 9, 16, 25]
    stop = patience_stop([0.1, 0.6, 0.8, 0.7, 0.75, 0.95], patience=2)  # best 0.8 at 2, fires at 4
    ends = stop_endpoints(gold, kl, stop, probe_prompts=32)
    assert ends["gold_final"] == 0.8 and ends["kl_final"] == 4
    assert ends["gold_peak"] == 0.9  # the best gold up to the stop (index 4)
    assert ends["regret"] == pytest.approx(0.1)  # the run's own peak 0.9 − 0.8
    assert ends["gold_queries"] == 32 * 5 and ends["fired"]


def fake_study(seeds=(0, 1, 2, 3)):
    """β = 0 single RM whose gold rises then falls while member 0 keeps rising; the held-out members
    peak with gold; a β = 0.05 setting that ends higher."""
    runs, hist = [], []
    rng = np.random.default_rng(0)
    for seed in seeds:
        for setting, beta in (("beta0", 0.0), ("beta005", 0.05)):
            steps = np.arange(8)
            gold = (np.array([0.1, 0.4, 0.7, 0.8, 0.6, 0.4, 0.3, 0.2]) if beta == 0
                    else np.array([0.1, 0.3, 0.5, 0.55, 0.6, 0.6, 0.6, 0.6])) + rng.normal(0, 0.01, 8)  # fmt: skip
            held = gold + 0.1  # the held-out members track gold
            run = f"{setting}/seed_{seed}"
            hist.append(pd.DataFrame({"run": run, "step": steps * 5, "kl": steps**2.0, "gold": gold,
                                      "gold_probe": gold + 0.02, "proxy_0": steps * 1.0,
                                      "proxy_1": held, "proxy_2": held}))  # fmt: skip
            runs.append({"run": run, "setting": setting, "seed": seed, "beta": beta, "adaptive": False,
                         "objective": "single", "condition": "clean", "algorithm": "ppo",
                         "gold_peak": gold.max(), "gold_final": gold[-1], "gold_at_budget": gold[-1]})  # fmt: skip
    return pd.DataFrame(runs), pd.concat(hist, ignore_index=True)


def test_early_stopping_arms_beat_the_over_optimised_baseline_under_holm():
    runs, hist = fake_study()
    hist["proxy_3"] = np.nan  # another run's extra member (a WARM run holds one more): not this run's
    arms = remedy_arms(runs, hist, None, patience=2, probe_every=1, probe_prompts=32)
    assert sorted(a["name"] for a in arms) == ["early_stop_gold", "early_stop_proxy"]
    family = remedies_family(arms, alpha=0.05)
    primary = family[family["endpoint"] == "gold_at_budget"].set_index("remedy")
    # Both rules return the evaluation at gold ≈ 0.8 (index 3); the baseline ends at ≈ 0.2.
    assert primary.loc["early_stop_proxy", "mean"] == pytest.approx(0.8, abs=0.03)
    assert primary.loc["early_stop_gold", "diff"] == pytest.approx(0.6, abs=0.03)
    assert (primary["verdict"] == "higher").all() and primary["robust"].all()
    # A rule reads the baseline's own runs: the test pairs each seed's stop with its own end.
    assert primary["paired"].all()
    gold_rule = next(a for a in arms if a["name"] == "early_stop_gold")
    by_hand = (gold_rule["arm"].set_index("seed")["gold_at_budget"] - gold_rule["base"].set_index("seed")["gold_at_budget"])
    assert primary.loc["early_stop_gold", "diff"] == pytest.approx(by_hand.mean())
    assert primary.loc["early_stop_gold", "p"] == pytest.approx(stats.ttest_1samp(by_hand, 0.0).pvalue)
    # Holm within the primary family: two tests, the smaller p doubled.
    ps = primary["p"].sort_values()
    assert primary["p_holm"].min() == pytest.approx(min(1.0, 2 * ps.iloc[0]))
    # Against the grid's best β (0.05, ending at 0.6): an estimate only.
    assert primary.loc["early_stop_gold", "vs_best_beta"] == pytest.approx(0.2, abs=0.03)
    # Stopped 2 evaluations after the peak at index 3: 6 checks of 32 prompts.
    assert primary.loc["early_stop_gold", "gold_queries"] == 6 * 32
    metrics = remedies_metrics(family)
    assert metrics["remedy.early_stop_gold.clean.gold_at_budget.n"] == 4
    assert metrics["remedy.early_stop_proxy.clean.gold_at_budget_vs_baseline.robust"] is True
    assert "remedy.early_stop_gold.clean.gold_peak_vs_baseline.p_holm" in metrics


def test_a_rule_that_returns_the_last_evaluation_returns_the_run_at_its_budget_and_one_never_stopping_early_is_not_tested():
    runs, hist = fake_study()
    # Held-out members that keep rising: the proxy rule never fires and returns the last evaluation,
    # the one past the budget, which is the baseline's own run at its budget.
    hist["proxy_1"] = hist["proxy_2"] = hist["step"] * 1.0
    runs = runs.assign(gold_at_budget=runs["gold_final"] - 0.05)  # read at the crossing, below the overshoot
    arms = {a["name"]: a for a in remedy_arms(runs, hist, None, patience=2, probe_every=1, probe_prompts=32)}
    proxy_arm, base = arms["early_stop_proxy"]["arm"].set_index("seed"), arms["early_stop_proxy"]["base"].set_index("seed")
    assert (proxy_arm["gold_at_budget"] == base["gold_at_budget"]).all()
    assert (proxy_arm["gold_final"] == base["gold_final"]).all()  # the overshoot's gold, kept as it was
    family = remedies_family(list(arms.values()), alpha=0.05)
    row = family[(family["remedy"] == "early_stop_proxy") & (family["endpoint"] == "gold_at_budget")].iloc[0]
    assert row["verdict"] == "identical to the baseline" and np.isnan(row["p"]) and np.isnan(row["p_holm"])
    # The family it left holds the gold rule alone: Holm over one test leaves its p as it is.
    gold = family[(family["remedy"] == "early_stop_gold") & (family["endpoint"] == "gold_at_budget")].iloc[0]
    assert gold["p_holm"] == pytest.approx(gold["p"])


def test_a_remedy_setting_is_compared_with_its_named_baseline_and_kept_out_of_the_early_stop_baselines():
    runs, hist = fake_study()
    centred = runs[runs["setting"] == "beta0"].assign(setting="centered_beta0", gold_at_budget=lambda f: f["gold_at_budget"] + 0.3,
                                                     run=lambda f: "c" + f["run"])  # fmt: skip
    runs = pd.concat([centred, runs], ignore_index=True)  # first in order: it must not become the baseline
    arms = remedy_arms(runs, hist, {"centering": {"centered_beta0": "beta0"}}, 2, 1, 32)
    by_name = {a["name"]: a for a in arms}
    assert set(by_name) == {"early_stop_proxy", "early_stop_gold", "centering"}
    assert set(by_name["early_stop_gold"]["base"]["setting"]) == {"beta0"}
    family = remedies_family(arms, alpha=0.05)
    row = family[(family["remedy"] == "centering") & (family["endpoint"] == "gold_at_budget")].iloc[0]
    assert row["diff"] == pytest.approx(0.3, abs=1e-9)


def test_d_grid_endpoints_are_secondary_rows_over_the_seeds_that_reach_each_distance():
    runs, hist = fake_study()
    base = runs[runs["setting"] == "beta0"].assign(gold_at_d2=[0.5, 0.6, 0.7, 0.6], gold_at_d3=[0.2, 0.3, 0.4, 0.3])
    # The remedy's seeds 2 and 3 never travel as far as d = 3: that row counts seeds 0 and 1 only.
    arm = base.assign(setting="centered_beta0", run=lambda f: "c" + f["run"], gold_at_d2=[0.6, 0.8, 0.9, 0.7],
                      gold_at_d3=[0.5, 0.7, np.nan, np.nan])  # fmt: skip
    runs = pd.concat([runs[runs["setting"] != "beta0"], base, arm], ignore_index=True)
    arms = [a for a in remedy_arms(runs, hist, {"centering": {"centered_beta0": "beta0"}}, 2, 1, 32)
            if a["name"] == "centering"]  # fmt: skip
    family = remedies_family(arms, alpha=0.05, d_grid=[2, 3, 4]).set_index("endpoint")
    assert list(family.index) == ["gold_at_budget", "gold_peak", "gold_at_d2", "gold_at_d3"]  # no d = 4 anywhere
    assert family.loc["gold_at_d2", "diff"] == pytest.approx(0.75 - 0.6)
    assert family.loc["gold_at_d3", "n"] == 2
    assert family.loc["gold_at_d3", "diff"] == pytest.approx(0.6 - 0.3)
    # One test per secondary family: Holm leaves it alone; robustness is the primary's only.
    assert family.loc["gold_at_d2", "p_holm"] == pytest.approx(family.loc["gold_at_d2", "p"])
    assert family.loc["gold_at_d2", "robust"] is None
    assert "remedy.centering.clean.gold_at_d3_vs_baseline.p_holm" in remedies_metrics(family.reset_index())


def test_gao_iterated_form_by_hand_and_its_fit_recovers_alpha_beta():
    # d = 4, α = 0.6, β = 0.3, k = 2: 4 · (0.6 − 0.3 ln 4 + 0.3 ln 2) = 4 · (0.6 − 0.3 ln 2).
    assert gao_rl_iterated(4.0, 0.6, 0.3, 2) == pytest.approx(4 * (0.6 - 0.3 * math.log(2)))
    assert gao_rl_iterated(4.0, 0.6, 0.3, 1) == pytest.approx(gao_rl(np.array([4.0]), 0.6, 0.3)[0])
    d = np.tile(np.linspace(0, 6, 13), 3)
    k = np.repeat([1, 2, 3], 13)
    fit = fit_gao_rl_iterated(d, gao_rl_iterated(d, 0.5, 0.2, k), k)
    assert (fit["alpha"], fit["beta"], fit["r2"]) == (pytest.approx(0.5), pytest.approx(0.2), pytest.approx(1.0))
    assert fit_gao_rl_iterated(d, gao_rl_iterated(d, 0.5, 0.2, k), np.ones_like(k))["r2"] < 0.99


def test_iterated_form_checks_rounds_that_continue_and_skips_restarts():
    runs, hist = [], []
    for setting, start in (("iter", "last"), ("restart", "sft")):
        for seed in (0, 1):
            run = f"{setting}/seed_{seed}"
            d = np.array([0.0, 1.0, 2.0, 2.0, 3.0, 4.0])  # round 2 starts where round 1 ended
            rnd = np.array([1, 1, 1, 2, 2, 2])
            hist.append(pd.DataFrame({"run": run, "step": np.arange(6), "d": d, "round": rnd,
                                      "gold_gain": gao_rl_iterated(d, 0.5, 0.2, rnd) + 0.01 * seed}))  # fmt: skip
            runs.append({"run": run, "setting": setting, "seed": seed, "condition": "clean", "round_start": start})
    check = iterated_form(pd.DataFrame(runs), pd.concat(hist, ignore_index=True), {"clean": {"alpha": 0.5, "beta": 0.2}})
    assert set(check["setting"]) == {"iter"}
    last = check.set_index("round").loc[2]
    assert last["d"] == 4.0 and last["seeds"] == 2
    assert last["predicted (k = round)"] == pytest.approx(gao_rl_iterated(4.0, 0.5, 0.2, 2))
    assert last["gold_gain"] == pytest.approx(gao_rl_iterated(4.0, 0.5, 0.2, 2) + 0.005)
    assert last["predicted (k = 1)"] < last["predicted (k = round)"]  # the β d log k lift
    assert last["refit R² (k = round)"] > last["refit R² (k = 1)"]


def test_warm_best_of_n_is_paired_over_prompts_and_holm_corrected_over_conditions():
    rows = []
    for condition, lift in (("clean", 0.0), ("noisy", 0.2)):
        for prompt in range(40):
            base = 0.1 * (prompt % 7)
            rows += [{"condition": condition, "objective": "single", "n": 64, "prompt": prompt, "gold": base},
                     {"condition": condition, "objective": "warm", "n": 64, "prompt": prompt,
                      "gold": base + lift + 0.01 * ((prompt % 3) - 1)}]  # fmt: skip
    result = warm_best_of_n(pd.DataFrame(rows), alpha=0.05).set_index("condition")
    assert result.loc["noisy", "diff"] == pytest.approx(0.2 + 0.01 * np.mean([(p % 3) - 1 for p in range(40)]))
    assert result.loc["noisy", "verdict"] == "higher" and result.loc["clean", "verdict"] != "higher"
    ps = result["p"].sort_values()  # Holm over the two conditions
    assert result.loc[ps.index[0], "p_holm"] == pytest.approx(min(1.0, 2 * ps.iloc[0]))
    assert result.loc[ps.index[1], "p_holm"] == pytest.approx(max(min(1.0, 2 * ps.iloc[0]), ps.iloc[1]))


def test_a_setting_stopped_online_is_measured_by_the_policy_it_returns():
    runs, hist = fake_study()
    online = runs[runs["setting"] == "beta0"].assign(setting="stopped", run=lambda f: "s" + f["run"],
                                                     gold_at_budget=0.3, gold_returned=[0.7, 0.8, 0.75, 0.85])  # fmt: skip
    arms = remedy_arms(pd.concat([runs, online], ignore_index=True), hist, {"early_stop_online": {"stopped": "beta0"}},
                       2, 1, 32, rules=())  # fmt: skip
    assert [a["name"] for a in arms] == ["early_stop_online"]
    row = remedies_family(arms, alpha=0.05).set_index("endpoint").loc["gold_at_budget"]
    assert row["mean"] == pytest.approx(0.775)


def test_member_agreement_adds_whether_warm_sees_the_hack_its_members_share(tmp_path):
    from rlhf_lab.analysis.comparisons import member_agreement
    from rlhf_lab.data.files import write_jsonl

    # Four samples, two members; gold < 0 on the last two, which both members rate above 0.
    members = [[1.0, 2.0], [0.0, 1.0], [3.0, 2.5], [2.0, 3.0]]
    gold = [0.5, 0.2, -0.4, -0.1]
    write_jsonl(tmp_path / "final_samples.jsonl",
                [{"members": m, "gold": g, "proxy": m[0]} for m, g in zip(members, gold)])
    runs = pd.DataFrame([{"beta": 0.0, "adaptive": False, "condition": "clean", "objective": "single",
                          "setting": "beta0", "path": str(tmp_path)}])
    warm = np.array([0.5, -1.0, 1.0, -0.5])  # WARM rates one of the two gold-losing samples above 0
    row = member_agreement(runs, {"clean": "fine-tune seed"}, {str(tmp_path): warm}).iloc[0]
    assert row["of those, all members > 0"] == 1.0 and row["of those, WARM > 0"] == 0.5
    by_hand = np.mean([np.corrcoef(warm, [m[k] for m in members])[0, 1] for k in (0, 1)])
    assert row["WARM–member correlation"] == pytest.approx(by_hand)
    assert "of those, WARM > 0" not in member_agreement(runs, {"clean": "fine-tune seed"}).columns  # no scores, no column
