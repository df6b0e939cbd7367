"""What the report draws and prints, against hand computations: the band rule, the axis range, one
name per setting, p at its permutation floor, and metric counts that match the page's words."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from rlhf_lab.analysis.comparisons import band_rule, d_band, y_limits
from rlhf_lab.analysis.findings import P_FLOOR, family_metrics, family_table, fmt_p
from rlhf_lab.analysis.labels import setting_label, setting_labels


def test_the_band_rule_draws_bands_from_three_seeds_and_clips_correlations():
    frame = pd.DataFrame({"setting": "a", "d": [0, 1, 2], "y": [0.5, 0.9, 0.95], "low": [-4.0, 0.7, 0.8],
                          "high": [4.0, 1.1, 1.2], "n": [2, 3, 5]})  # fmt: skip
    drawn = band_rule(frame, bounds=(-1.0, 1.0))
    assert math.isnan(drawn.loc[0, "low"]) and math.isnan(drawn.loc[0, "high"])  # two seeds: mean only
    assert drawn.loc[0, "y"] == 0.5
    assert drawn.loc[1:, "high"].tolist() == [1.0, 1.0] and drawn.loc[1:, "low"].tolist() == [0.7, 0.8]


def test_d_band_keeps_a_two_seed_mean_without_its_band():
    hist = pd.DataFrame({"setting": "s", "seed": np.repeat([0, 1, 2], 3), "step": np.tile([0, 5, 10], 3),
                         "kl": [0, 1, 4, 0, 1, 4, 0, 1, 1.5], "y": [0, 1, 2, 0, 3, 4, 0, 2, 2]})  # fmt: skip
    band, seeds = d_band(hist, "y", [0.0, 1.0, 2.0])
    at = band.set_index("d")
    assert at.loc[1.0, "n"] == 3 and at.loc[1.0, "y"] == pytest.approx(2.0) and np.isfinite(at.loc[1.0, "low"])
    # d = 2 (KL 4): seeds 0 and 1 only (seed 2 stops at KL 1.5): mean (2 + 4)/2, no band
    assert at.loc[2.0, "n"] == 2 and at.loc[2.0, "y"] == pytest.approx(3.0) and math.isnan(at.loc[2.0, "high"])
    assert len(seeds) == 8


def test_y_limits_come_from_the_means_and_drawn_bands_only():
    band = pd.DataFrame({"y": [0.0, 1.0], "low": [np.nan, -0.5], "high": [np.nan, 1.5]})
    assert y_limits(band, "y") == (pytest.approx(-0.5 - 0.08 * 2), pytest.approx(1.5 + 0.08 * 2))
    assert y_limits(pd.DataFrame({"y": [np.nan], "low": [np.nan], "high": [np.nan]}), "y") is None


def test_one_readable_name_per_setting():
    assert setting_label(0.01) == "β = 0.01"
    assert setting_label(0.0, "uwo", "noisy", first="clean") == "β = 0, noisy, UWO"
    assert setting_label(0.02, adaptive=True) == "β = 0.02 (adaptive)"
    assert setting_label(0.1, "single", "clean", "clean", algorithm="grpo") == "β = 0.1, GRPO"
    runs = pd.DataFrame([{"setting": "beta0", "beta": 0.0, "objective": "single", "condition": "clean"},
                         {"setting": "noisy_beta0_uwo", "beta": 0.0, "objective": "uwo", "condition": "noisy"},
                         {"setting": "b1", "beta": 0.1, "objective": "single", "condition": "clean"},
                         {"setting": "b1_again", "beta": 0.1, "objective": "single", "condition": "clean"}])  # fmt: skip
    labels = setting_labels(runs, "clean")
    assert labels["beta0"] == "β = 0" and labels["noisy_beta0_uwo"] == "β = 0, noisy, UWO"
    assert labels["b1"] == "β = 0.1 [b1]" and labels["b1_again"] == "β = 0.1 [b1_again]"  # alike: keys kept


def test_a_p_value_at_its_permutation_floor_prints_as_a_bound():
    assert P_FLOOR == pytest.approx(2e-4)  # two-sided: 2 / (9999 + 1)
    assert fmt_p(2e-4, at_floor=True) == "≤ 0.0002" and fmt_p(0.0312) == "0.0312" and fmt_p(float("nan")) == "—"


def family():
    rows = [  # two supported, one of them robust; one robust but not supported
        {"key": "beta.0.05", "question": "beta", "beta": 0.05, "condition": "clean", "diff": 0.9, "ci_low": 0.5,
         "ci_high": 1.3, "p": 0.001, "p_holm": 0.003, "verdict": "higher", "robust": True, "n_a": 5, "n_b": 5,
         "mde": 0.6, "seeds_needed": 4.0, "family_size": 3},
        {"key": "ensemble.clean.mean", "question": "ensemble", "objective": "mean", "condition": "clean", "diff": 0.4,
         "ci_low": 0.1, "ci_high": 0.7, "p": 0.01, "p_holm": 0.02, "verdict": "higher", "robust": False, "n_a": 5,
         "n_b": 5, "mde": 0.5, "seeds_needed": 9.0, "family_size": 3},
        {"key": "bon.clean.uwo", "question": "bon", "objective": "uwo", "condition": "clean", "diff": 0.01,
         "ci_low": -0.01, "ci_high": 0.03, "p": 0.2, "p_holm": 0.2, "verdict": "not supported", "robust": True,
         "n_a": 128, "n_b": 128, "mde": 0.03, "seeds_needed": None, "family_size": 3, "p_at_floor": False},
    ]
    return pd.DataFrame(rows)


def test_the_counts_in_metrics_match_what_the_page_counts():
    metrics = family_metrics(family())
    assert (metrics["primary.supported"], metrics["primary.supported_robust"], metrics["primary.verdicts_robust"]) == (2, 1, 2)
    assert "primary.robust" not in metrics
    assert metrics["beta.0.05.gold_at_budget_vs_beta0.diff"] == 0.9


def test_the_family_table_names_each_comparison_and_has_no_missing_cell():
    shown = family_table(family())
    assert shown["comparison"].tolist() == ["β = 0.05 vs β = 0", "clean: mean vs single RM", "clean: UWO vs single RM (best-of-n)"]
    assert shown.loc[0, "difference [95 % CI]"] == "+0.900 [+0.500, +1.300]" and shown.loc[2, "seeds needed"] == "— (over prompts)"
    assert not shown.isna().any().any()


def test_the_report_reads_each_run_at_the_budget_it_ran_under(tmp_path):
    from pipelines.report import every_run_table
    from rlhf_lab.analysis.runs import load_runs
    from rlhf_lab.analysis.findings import add_endpoints

    curves = {0: ([0, 10, 30, 90], [0.0, 0.5, 0.7, -0.5]), 1: ([0, 10, 26], [0.0, 0.4, 0.6])}  # 1: the cap stopped it
    for seed, (kl, gold) in curves.items():
        path = tmp_path / "beta0" / "seeds" / f"seed_{seed}"
        path.mkdir(parents=True)
        (path / "run.json").write_text(json.dumps({"algorithm": "ppo", "condition": "clean", "objective": "single",
                                                   "beta": 0.0, "adaptive": False, "seed": seed}))  # fmt: skip
        (path / "metrics.json").write_text(json.dumps({"gold_initial": 0.0}))
        (path / "final_samples.jsonl").write_text(json.dumps({"response": "a b c"}) + "\n")
        (path / "config.yaml").write_text("ppo:\n  kl_budget: 50.0\n")
        pd.DataFrame({"step": range(len(kl)), "kl": kl, "gold": gold, "proxy": range(len(kl))}).to_csv(
            path / "eval_history.csv", index=False)
    runs, hist = load_runs(tmp_path)
    runs = add_endpoints(runs, hist, [2], 0.2).set_index("seed")
    # seed 0 crosses 50 between KL 30 and 90: 0.7 + (20/60)(−1.2) = 0.3; seed 1 never does: its last gold
    assert runs.loc[0, "gold_at_budget"] == pytest.approx(0.3) and runs.loc[0, "kl_at_budget"] == 50.0
    assert (runs.loc[1, "gold_at_budget"], runs.loc[1, "kl_at_budget"], runs.loc[1, "budget_reached"]) == (0.6, 26.0, False)
    shown = every_run_table(runs.reset_index(), {"beta0": "β = 0"})
    assert shown["read"].tolist() == ["at the KL budget", "at the iteration cap"] and set(shown["setting"]) == {"β = 0"}
