"""The experiment's declared design, applied to the report's frames: each run's endpoints, the primary
family of comparisons with Holm's correction, the power each buys and whether one seed decides it.

Declared before the data (the report states it in these words):

- endpoints of a run (:func:`rlhf_lab.analysis.fits.run_endpoints`): gold peak, KL at the peak, gold at
  each distance of ``report.d_grid``, final gold at the run's budget, gold drop;
- primary comparisons, one endpoint per question: gold peak of each ensemble objective against the
  single RM of its condition (β = 0); final gold of each β > 0 against β = 0 (single RM, first
  condition); best-of-n gold at the largest n of each objective against the single RM, per condition,
  paired over prompts. Holm over the whole family; "supported" means p_holm < ``report.alpha``;
- secondary endpoints (gold at the d grid, gold drop, KL at the peak) are estimates with intervals and
  no verdict;
- power: the difference each comparison detects with 80 % power at level α/m (Holm's strictest step,
  so a lower bound on the corrected test's power) from the observed spread, and the seeds a
  difference of the observed size would need;
- robustness: the verdict is the same with any one seed left out (:func:`rlhf_lab.analysis.stats.leave_one_seed_out`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rlhf_lab.analysis.comparisons import fmt_interval
from rlhf_lab.analysis.fits import curve_to_budget, fit_gao, rl_fits, run_endpoints
from rlhf_lab.analysis.labels import OBJECTIVE_SHORT
from rlhf_lab.analysis.proportions import wilson_interval
from rlhf_lab.analysis.stats import (
    bootstrap_mean_interval,
    holm,
    leave_one_seed_out,
    minimum_detectable_difference,
    paired_mde,
    permutation_p,
    seeds_needed,
    t_interval,
    verdict,
    welch_difference,
)

OBJECTIVES = ("mean", "wco", "uwo")  # the ensemble objectives, each against the single RM
POWER = 0.8
PERMUTATIONS = 9999  # best-of-n's paired permutation test (scipy): its p cannot fall below P_FLOOR
P_FLOOR = 2 / (PERMUTATIONS + 1)  # two-sided: twice the smaller one-sided (count + 1) / (n + 1)


def add_endpoints(runs: pd.DataFrame, hist: pd.DataFrame, d_grid, min_drop: float) -> pd.DataFrame:
    """``runs`` with each run's declared endpoints, computed from its evaluation history and read at its
    own KL budget (column ``kl_budget``; none: at its last evaluation)."""
    rows = []
    budgets = runs["kl_budget"] if "kl_budget" in runs else pd.Series(np.nan, index=runs.index)
    for run, budget in zip(runs["run"], budgets):
        h = hist[hist["run"] == run].sort_values("step")
        budget = float(budget) if budget is not None and np.isfinite(budget) else None
        rows.append(run_endpoints(h["kl"], h["gold"], h["proxy"], d_grid, min_drop, kl_budget=budget))
    ends = pd.DataFrame(rows, index=runs.index)
    return runs.drop(columns=[c for c in ends if c in runs]).join(ends)


def history_to_budget(hist: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Every run's evaluation rows up to its KL budget (column ``kl_budget`` of ``runs``), the last one
    the point at the budget itself, its numeric columns interpolated (:func:`rlhf_lab.analysis.fits.curve_to_budget`):
    the curves the fits and figures read, so that an evaluation that overshot the budget by tens of nats
    does not stretch them past the distance every run is given."""
    budgets = dict(zip(runs["run"], runs["kl_budget"])) if "kl_budget" in runs else {}
    frames = []
    for run, h in hist.groupby("run", sort=False):
        budget = budgets.get(run)
        h = h.sort_values("step")
        if budget is None or not np.isfinite(budget) or not (h["kl"] >= budget).any():
            frames.append(h)
            continue
        first = int(np.argmax(h["kl"].to_numpy() >= budget))
        numeric = [c for c in h.select_dtypes("number") if c not in ("kl", "step", "seed", "beta", "round")]
        cut = h.iloc[: first + 1].copy()
        kl, *values = curve_to_budget(h["kl"], *(h[c] for c in numeric), budget=float(budget))
        cut["kl"] = kl
        for column, value in zip(numeric, values):
            cut[column] = value
        if "d" in cut:
            cut["d"] = np.sqrt(cut["kl"].clip(lower=0))
        frames.append(cut)
    return pd.concat(frames, ignore_index=True) if frames else hist


def zero_beta(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["beta"] == 0) & ~runs["adaptive"]]


def by_seed(frame: pd.DataFrame, column: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(frame["seed"], frame[column])}


def seed_comparisons(runs: pd.DataFrame, first: str) -> list[dict]:
    """The primary comparisons over seeds: (key, question, condition, label, endpoint, a, b by seed)."""
    out = []
    zero = zero_beta(runs)
    for condition, group in zero.groupby("condition", sort=False):
        single = group[group["objective"] == "single"]
        for objective in OBJECTIVES:
            mine = group[group["objective"] == objective]
            if mine.empty or single.empty:
                continue
            out.append({"key": f"ensemble.{condition}.{objective}", "question": "ensemble", "condition": condition,
                        "objective": objective, "endpoint": "gold_peak",
                        "a": by_seed(mine, "gold_peak"), "b": by_seed(single, "gold_peak")})  # fmt: skip
    fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
    base = fixed[fixed["beta"] == 0]
    for beta, group in fixed[fixed["beta"] > 0].groupby("beta"):
        if not base.empty:
            out.append({"key": f"beta.{beta:g}", "question": "beta", "condition": first, "beta": float(beta),
                        "endpoint": "gold_at_budget", "a": by_seed(group, "gold_at_budget"),
                        "b": by_seed(base, "gold_at_budget")})  # fmt: skip
    return out


def bon_comparisons(bon_prompts: pd.DataFrame | None, objectives=OBJECTIVES) -> list[dict]:
    """Best-of-n at the largest n, each of ``objectives`` against the single RM: paired over prompts."""
    out = []
    if bon_prompts is None or bon_prompts.empty:
        return out
    for condition, group in bon_prompts.groupby("condition", sort=False):
        single = group[group["objective"] == "single"].set_index("prompt")["gold"]
        for objective in objectives:
            mine = group[group["objective"] == objective].set_index("prompt")["gold"]
            if mine.empty:
                continue
            diffs = (mine - single.reindex(mine.index)).to_numpy()
            ci = bootstrap_mean_interval(diffs)
            out.append({"key": f"bon.{condition}.{objective}", "question": "bon", "condition": condition,
                        "objective": objective, "endpoint": f"gold at n = {int(group['n'].iloc[0])}",
                        "diff": ci.mean, "ci_low": ci.ci_low, "ci_high": ci.ci_high,
                        "p": permutation_p(mine.to_numpy(), single.reindex(mine.index).to_numpy(), paired=True,
                                           n_resamples=PERMUTATIONS),
                        "n_a": len(diffs), "n_b": len(diffs), "sd": float(np.std(diffs, ddof=1))})  # fmt: skip
    return out


def primary_family(runs: pd.DataFrame, bon_prompts: pd.DataFrame | None, first: str, alpha: float) -> pd.DataFrame:
    """One row per primary comparison: the difference [95 % CI], p, Holm's p over the family, the
    verdict, whether it survives leaving any one seed out, and the power the design buys."""
    over_seeds, over_prompts = seed_comparisons(runs, first), bon_comparisons(bon_prompts)
    rows = []
    for c in over_seeds:
        d = welch_difference(list(c["a"].values()), list(c["b"].values()))
        sd_a, sd_b = np.std(list(c["a"].values()), ddof=1), np.std(list(c["b"].values()), ddof=1)
        rows.append({**{k: v for k, v in c.items() if k not in ("a", "b")}, "diff": d.diff, "ci_low": d.ci_low,
                     "ci_high": d.ci_high, "p": d.p, "n_a": d.n_a, "n_b": d.n_b, "sd_a": sd_a, "sd_b": sd_b})  # fmt: skip
    rows += over_prompts
    family = pd.DataFrame(rows)
    if family.empty:
        return family
    m = int(np.isfinite(family["p"]).sum())
    family["p_holm"] = holm(family["p"])
    # A permutation p at its floor is a bound (≤), and so is the Holm p built on it.
    family["p_at_floor"] = [bool(q == "bon" and p <= P_FLOOR * (1 + 1e-9)) for q, p in zip(family["question"], family["p"])]
    family["verdict"] = [verdict(d, q, alpha) for d, q in zip(family["diff"], family["p_holm"])]
    robust = leave_one_seed_out({c["key"]: (c["a"], c["b"]) for c in over_seeds},
                                fixed={c["key"]: (c["diff"], c["p"]) for c in over_prompts}, alpha=alpha)  # fmt: skip
    family["robust"] = family["key"].map(robust)
    level = alpha / max(m, 1)  # Holm's strictest step: the power below is a lower bound
    mde, needed = [], []
    for _, row in family.iterrows():
        if row["question"] == "bon":
            mde.append(paired_mde(row["sd"], int(row["n_a"]), level, POWER))
            needed.append(None)  # over prompts, not seeds
        else:
            mde.append(minimum_detectable_difference(row["sd_a"], int(row["n_a"]), row["sd_b"], int(row["n_b"]), level, POWER))
            needed.append(seeds_needed(row["sd_a"], row["sd_b"], row["diff"], level, POWER))
    family["mde"], family["seeds_needed"], family["family_size"], family["level"] = mde, needed, m, level
    return family


def bon_single(bon: pd.DataFrame, condition: str) -> pd.DataFrame:
    """Best-of-n by the single RM in one condition, with d = √KL (exact) and the gold gain over n = 1."""
    single = bon[(bon["objective"] == "single") & (bon["condition"] == condition)].copy()
    single["d"] = np.sqrt(single["kl_exact"])
    single["gold_gain"] = single["gold"] - single["gold"].iloc[0]
    return single


def overoptimisation_fits(hist: pd.DataFrame, bon: pd.DataFrame, first: str) -> tuple[dict, dict]:
    """Gao's RL form fitted to the β = 0 single-RM runs of each condition that has them (by condition;
    :func:`rlhf_lab.analysis.fits.rl_fits`), and the best-of-n form to the first condition's single RM."""
    zero_single = hist[(hist["objective"] == "single") & (hist["beta"] == 0) & ~hist["adaptive"]]
    rl = {condition: rl_fits({int(g["seed"].iloc[0]): (g["d"].to_numpy(), g["gold_gain"].to_numpy())
                              for _, g in group.groupby("run")})
          for condition, group in zero_single.groupby("condition", sort=False)}  # fmt: skip
    single = bon_single(bon, first)
    return rl, fit_gao(single["d"], single["gold_gain"], "bon")


def overoptimisation_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: how many of its seeds over-optimised (gold fell from its peak while proxy rose)."""
    counts = (runs.groupby(["setting", "condition", "objective", "beta"], sort=False)["overoptimised"]
              .agg(seeds_overoptimised="sum", seeds="count").reset_index())  # fmt: skip
    counts["rate [95 % Wilson CI]"] = [str(wilson_interval(int(k), int(n)))
                                       for k, n in zip(counts["seeds_overoptimised"], counts["seeds"])]  # fmt: skip
    return counts


def fmt_p(p: float, at_floor: bool = False) -> str:
    """A p-value to four decimals; one at its permutation floor as a bound (≤)."""
    if not np.isfinite(p):
        return "—"
    return f"≤ {p:.4f}" if at_floor else (f"{p:.4f}" if p >= 1e-4 else "< 0.0001")


QUESTION_ENDPOINTS = {"ensemble": "gold peak", "beta": "gold at the KL budget", "bon": "gold at the largest n"}


def comparison_name(row: pd.Series) -> str:
    """A primary comparison in words: "β = 0.01 vs β = 0", "noisy: UWO vs single RM (best-of-n)"."""
    if row["question"] == "beta":
        return f"β = {row['beta']:g} vs β = 0"
    objective = OBJECTIVE_SHORT[row["objective"]]
    return f"{row['condition']}: {objective} vs single RM" + (" (best-of-n)" if row["question"] == "bon" else "")


def fmt_difference(row: pd.Series) -> str:
    return f"{row['diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def finding(row: pd.Series, alpha: float) -> str:
    """One primary comparison in a sentence: the effect's size and interval first, then n, Holm p,
    robustness and the smallest difference the design detects."""
    at_floor = bool(row.get("p_at_floor", False))
    outcome = {"higher": "supported gain", "lower": "supported harm", "not supported": "not supported"}[row["verdict"]]
    n = f"{row['n_a']} vs {row['n_b']} seeds" if row["question"] != "bon" else f"{row['n_a']} prompts, paired"
    robust = "" if row["question"] == "bon" else ("; robust to leaving any one seed out" if row["robust"]
                                                  else "; <b>not robust</b>: one seed decides it")  # fmt: skip
    return (f"{comparison_name(row)} ({QUESTION_ENDPOINTS[row['question']]}): {outcome}, {fmt_difference(row)} "
            f"({n}; Holm p {fmt_p(row['p_holm'], at_floor)}{robust}; detectable: ±{row['mde']:.3f})")  # fmt: skip


def family_table(family: pd.DataFrame) -> pd.DataFrame:
    """Every primary comparison, one row each: what, endpoint, difference [95 % CI], n, p, Holm p,
    verdict, robust, the smallest difference detectable and the seeds a difference of this size needs."""
    rows = []
    for _, row in family.iterrows():
        at_floor = bool(row.get("p_at_floor", False))
        over_seeds = row["question"] != "bon"
        rows.append({"comparison": comparison_name(row), "endpoint": QUESTION_ENDPOINTS[row["question"]],
                     "difference [95 % CI]": fmt_difference(row),
                     "n": f"{row['n_a']} vs {row['n_b']} seeds" if over_seeds else f"{row['n_a']} prompts",
                     "p": fmt_p(row["p"], at_floor), "Holm p": fmt_p(row["p_holm"], at_floor), "verdict": row["verdict"],
                     "robust (leave one seed out)": ("yes" if row["robust"] else "no") if over_seeds else "— (over prompts)",
                     "detectable (80 % power)": f"±{row['mde']:.3f}",
                     "seeds needed": (str(int(row["seeds_needed"])) if pd.notna(row["seeds_needed"]) else "> 100")
                     if over_seeds else "— (over prompts)"})  # fmt: skip
    return pd.DataFrame(rows)


def family_metrics(family: pd.DataFrame) -> dict:
    """metrics.json keys of the primary family: ``<key>_vs_…`` differences and ``power.<key>.*``;
    ``primary.supported`` counts the supported verdicts, ``primary.supported_robust`` those of them that
    survive leaving any one seed out (what the page counts), ``primary.verdicts_robust`` every verdict,
    supported or not, that does."""
    metrics = {}
    for _, row in family.iterrows():
        name = {"ensemble": f"{row['key']}.gold_peak_vs_single", "beta": f"{row['key']}.gold_at_budget_vs_beta0",
                "bon": f"{row['key']}.gold_max_n_vs_single"}[row["question"]]  # fmt: skip
        metrics.update({f"{name}.{k}": row[k] for k in ("diff", "ci_low", "ci_high", "p", "p_holm")})
        metrics[f"{name}.robust"] = bool(row["robust"])
        metrics[f"{name}.verdict"] = row["verdict"]
        metrics[f"power.{row['key']}.mde"] = row["mde"]
        metrics[f"power.{row['key']}.seeds_needed"] = row["seeds_needed"]
    if not family.empty:
        supported = family["verdict"] != "not supported"
        metrics["primary.family_size"] = int(family["family_size"].iloc[0])
        metrics["primary.supported"] = int(supported.sum())
        metrics["primary.supported_robust"] = int((supported & family["robust"].astype(bool)).sum())
        metrics["primary.verdicts_robust"] = int(family["robust"].astype(bool).sum())
    return metrics


def fmt_iv(values) -> str:
    """Seeds' values as mean [95 % t interval]; where some seeds never reached the distance, how many
    did; none: "not reached"."""
    values = np.asarray(values, dtype=np.float64)
    reached = int(np.isfinite(values).sum())
    if not reached:
        return f"not reached (0 of {len(values)})"
    text = fmt_interval(t_interval(values))
    return text if reached == len(values) else f"{text} ({reached} of {len(values)} reached)"


def ensemble_table(runs: pd.DataFrame, family: pd.DataFrame, d_grid) -> pd.DataFrame:
    """β = 0 runs by condition and objective: the primary endpoint (gold peak) with its test against the
    single RM, then the secondary endpoints as estimates [95 % CI] (gold at each d, gold drop, KL at the peak)."""
    rows = []
    tests = family.set_index("key") if not family.empty else pd.DataFrame()
    zero = zero_beta(runs)
    for (condition, objective), group in zero.groupby(["condition", "objective"], sort=False):
        single = zero[(zero["condition"] == condition) & (zero["objective"] == "single")]
        row = {"condition": condition, "objective": OBJECTIVE_SHORT[objective] or "single RM", "n": len(group),
               "over-optimised": str(wilson_interval(int(group["overoptimised"].sum()), len(group))),
               "gold peak [95 % CI]": fmt_iv(group["gold_peak"])}  # fmt: skip
        key = f"ensemble.{condition}.{objective}"
        if key in tests.index:
            t = tests.loc[key]
            row.update({"vs single [95 % CI]": fmt_difference(t), "Holm p": fmt_p(t["p_holm"]), "verdict": t["verdict"],
                        "robust": "yes" if t["robust"] else "no", "detectable (80 %)": f"±{float(t['mde']):.3f}",
                        "seeds needed": str(int(t["seeds_needed"])) if pd.notna(t["seeds_needed"]) else "> 100"})  # fmt: skip
        else:
            row.update({"vs single [95 % CI]": "— (the baseline)", "Holm p": "—", "verdict": "—", "robust": "—",
                        "detectable (80 %)": "—", "seeds needed": "—"})  # fmt: skip
        for d in d_grid:
            column = f"gold_at_d{d:g}"
            row[f"gold at d={d:g}"] = fmt_iv(group[column])
            if objective != "single" and not single.empty:
                diff = welch_difference(group[column], single[column])
                row[f"Δ at d={d:g} (no verdict)"] = (f"{diff.diff:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]"
                                                     if np.isfinite(diff.ci_low) else "— (under 2 seeds reached it)")
            else:
                row[f"Δ at d={d:g} (no verdict)"] = "— (the baseline)"
        row["gold drop"] = fmt_iv(group["gold_drop"])
        row["KL at peak"] = fmt_iv(group["gold_peak_kl"])
        rows.append(row)
    return pd.DataFrame(rows)


def seed_fit_table(rl: dict[str, dict]) -> pd.DataFrame:
    """Each β = 0 single-RM seed's own RL fit (Gao's α_G, β_G: the form's coefficients, not the KL
    coefficient); its peak only where the fit clears the peak rule (:func:`rlhf_lab.analysis.fits.quoted_peak`),
    else why not."""
    rows = []
    for condition, fit in rl.items():
        for own in fit["per_seed"]:
            peak = f"{own['quoted_peak_kl']:.1f}" if own["quoted_peak_kl"] is not None else f"none quoted: {own['why_no_peak']}"
            rows.append({"condition": condition, "seed": own["seed"], "α_G": round(own["alpha"], 3),
                         "β_G": round(own["beta"], 3), "R²": round(own["r2"], 3), "KL reached": round(own["max_kl"], 1),
                         "peak KL (nats)": peak})  # fmt: skip
    return pd.DataFrame(rows)


def sweep_against_grid(trial_finals: list[float], best: dict, runs: pd.DataFrame, first: str, alpha: float) -> str:
    """A sentence: the sweep's best trial against the β grid's best setting (final gold), with the
    interval and n of each, and whether they can be told apart."""
    fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
    if fixed.empty or not trial_finals:
        return ""
    means = fixed.groupby("beta")["gold_final"].mean()
    grid_beta = float(means.idxmax())
    grid = fixed[fixed["beta"] == grid_beta]["gold_final"]
    text = (f"The best trial (β = {best['beta']:.3g}, ε = {best['clip_eps']:.3g}) ended at gold {fmt_iv(trial_finals)} "
            f"(n = {len(trial_finals)}); the β grid's best setting (β = {grid_beta:g}, ε from params) at {fmt_iv(grid)} "
            f"(n = {len(grid)}). ")  # fmt: skip
    if len(trial_finals) < 2:
        return text + "With one seed a trial has no interval: whether it beats the grid cannot be told."
    diff = welch_difference(trial_finals, grid)
    if np.isfinite(diff.p) and diff.p < alpha:
        return text + (f"The difference, {diff.diff:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}] (Welch p = "
                       f"{diff.p:.3f}, one comparison outside the primary family), is supported at {alpha:g}.")  # fmt: skip
    return text + (f"They are indistinguishable: {diff.diff:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}], "
                   f"Welch p = {diff.p:.2f}. The sweep's other trials within noise of the best are as good a choice.")  # fmt: skip


def replication(runs: pd.DataFrame, bon_prompts: pd.DataFrame | None, first: str, alpha: float,
                seed_sets) -> tuple[pd.DataFrame, dict]:  # fmt: skip
    """Each primary comparison over seeds decided from each disjoint seed set alone (Holm within that
    set's family), side by side: a verdict that differs between the sets is not a finding."""
    per_set = [primary_family(runs[runs["seed"].isin(seeds)], bon_prompts, first, alpha) for seeds in seed_sets]
    rows, metrics = [], {}
    keys = [k for k in per_set[0]["key"] if not k.startswith("bon.")] if not per_set[0].empty else []
    for key in keys:
        row = {"comparison": key}
        outcomes = []
        for i, (seeds, family) in enumerate(zip(seed_sets, per_set)):
            t = family.set_index("key").loc[key]
            outcomes.append(t["verdict"])
            row[f"seeds {min(seeds)}–{max(seeds)}"] = (f"{t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}], "
                                                       f"Holm p {fmt_p(t['p_holm'])}: {t['verdict']}")  # fmt: skip
            metrics[f"replication.{key}.set{i}.verdict"] = t["verdict"]
            metrics[f"replication.{key}.set{i}.p_holm"] = t["p_holm"]
        row["agree"] = "yes" if len(set(outcomes)) == 1 else "no"
        metrics[f"replication.{key}.agree"] = len(set(outcomes)) == 1
        rows.append(row)
    return pd.DataFrame(rows), metrics
