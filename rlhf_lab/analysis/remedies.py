"""The remedies for over-optimisation, each against the β = 0 single-RM baseline of its condition, on
the declared endpoints (issue: remedies).

Two kinds of remedy arm:

- a rule over the baseline's own runs (early stopping, :mod:`rlhf_lab.algorithms.early_stopping`):
  the same runs, stopped where the rule says; free, so the default run measures them;
- a setting of its own (``report.remedies``: {remedy: {setting: baseline setting}}), e.g. a reward
  condition with centering or label smoothing, the adaptive KL controller, or a rule run online
  (``ppo.early_stop``), whose final gold is that of the policy it returns.

The primary endpoint of a remedy is the gold of the policy it leaves you with at the KL budget
(``gold_at_budget``: a run that goes to its budget is read where it crosses it, as every run is):
a test over seeds against the baseline, Holm over the remedies' family, leave-one-seed-out robustness
and the power the seeds buy. Gold peak and gold at each distance of the d grid are secondary, each
Holm-corrected within its own family; an early-stopping arm has no d-grid endpoints (its curve is the
baseline's up to the stop). An early-stopping arm is its baseline's own runs read another way, so it
is compared with them paired by seed (a paired t test, its power and seeds from the differences'
spread); a setting of its own is a different set of runs: Welch.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from rlhf_lab.algorithms.early_stopping import held_out_members, patience_stop, stop_endpoints
from rlhf_lab.analysis.findings import bon_comparisons, by_seed
from rlhf_lab.analysis.fits import fit_gao_rl_iterated, gao_rl_iterated
from rlhf_lab.analysis.stats import (
    holm,
    leave_one_seed_out,
    minimum_detectable_difference,
    paired_difference,
    paired_mde,
    paired_seeds_needed,
    seeds_needed,
    t_interval,
    verdict,
    welch_difference,
)

ENDPOINTS = ("gold_at_budget", "gold_peak")  # the first is the remedies' primary endpoint
ENDPOINT_NAMES = {"gold_at_budget": "gold at the KL budget (returned policy)", "gold_peak": "gold peak"}
POWER = 0.8


def baselines(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per condition, the runs of its β = 0 single-RM setting (the first such setting)."""
    zero = runs[(runs["beta"] == 0) & ~runs["adaptive"] & (runs["objective"] == "single")]
    out = {}
    for condition, group in zero.groupby("condition", sort=False):
        out[condition] = group[group["setting"] == group["setting"].iloc[0]]
    return out


def early_stop_arms(base: pd.DataFrame, hist: pd.DataFrame, patience: int, probe_every: int,
                    probe_prompts: int, rules=("proxy", "gold")) -> dict[str, pd.DataFrame]:  # fmt: skip
    """Each early-stopping rule of ``rules`` applied to each baseline run: one row per seed with the
    stop's endpoints (gold of the returned policy, regret, gold queries)."""
    proxy_rows, gold_rows = [], []
    for _, run in base.iterrows():
        h = hist[hist["run"] == run["run"]].sort_values("step")
        # This run's members: the frame holds every run's columns, and a run with more members (WARM's
        # average beside them) leaves NaN columns in the others'.
        members = sorted((c for c in h if c.startswith("proxy_") and c[6:].isdigit() and h[c].notna().all()),
                         key=lambda c: int(c[6:]))  # fmt: skip
        if "proxy" in rules and len(members) > 1:  # the single RM trains on member 0; the rest are held out
            stop = patience_stop(held_out_members(h[members].to_numpy(), [0]), patience)
            proxy_rows.append({"seed": run["seed"], **at_budget(stop_endpoints(h["gold"], h["kl"], stop), stop, run, len(h))})
        if "gold" in rules and "gold_probe" in h and h["gold_probe"].notna().all():
            stop = patience_stop(h["gold_probe"].to_numpy(), patience, check_every=probe_every)
            gold_rows.append({"seed": run["seed"], **at_budget(stop_endpoints(h["gold"], h["kl"], stop, probe_prompts),
                                                               stop, run, len(h))})  # fmt: skip
    return {name: pd.DataFrame(rows) for name, rows in
            (("early_stop_proxy", proxy_rows), ("early_stop_gold", gold_rows)) if rows}  # fmt: skip


def at_budget(ends: dict, stop, run: pd.Series, evaluations: int) -> dict:
    """A stop's endpoints on the baseline's scale: a rule that returns the run's last evaluation (the one
    past the KL budget) returns the run as its budget ends it, so its gold is the baseline's own gold at
    the budget (and its peak the baseline's), not the overshoot's; any earlier evaluation is itself."""
    last = evaluations - 1
    return {**ends, "gold_at_budget": run["gold_at_budget"] if stop.chosen == last else ends["gold_final"],
            "gold_peak": run["gold_peak"] if stop.stop == last else ends["gold_peak"]}  # fmt: skip


def best_beta(runs: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The runs of the fixed-β > 0 single-RM setting with the highest mean final gold in a condition."""
    fixed = runs[(runs["beta"] > 0) & ~runs["adaptive"] & (runs["objective"] == "single")
                 & (runs["condition"] == condition)]  # fmt: skip
    if fixed.empty:
        return fixed
    best = fixed.groupby("setting")["gold_at_budget"].mean().idxmax()
    return fixed[fixed["setting"] == best]


def remedy_arms(runs: pd.DataFrame, hist: pd.DataFrame, remedies: dict, patience: int, probe_every: int,
                probe_prompts: int, rules=("proxy", "gold")) -> list[dict]:  # fmt: skip
    """Every (remedy, condition) arm with its baseline: {name, condition, arm, base, best_beta}."""
    bases = baselines(runs[~runs["setting"].isin(remedy_settings(remedies))])
    arms = []
    for condition, base in bases.items():
        for name, frame in early_stop_arms(base, hist, patience, probe_every, probe_prompts, rules).items():
            arms.append({"name": name, "condition": condition, "arm": frame, "base": base, "paired": True})
    for name, pairs in (remedies or {}).items():
        for setting, base_setting in pairs.items():
            arm, base = runs[runs["setting"] == setting], runs[runs["setting"] == base_setting]
            if arm.empty or base.empty:
                continue
            if "gold_returned" in arm and arm["gold_returned"].notna().all():
                # Stopped online (ppo.early_stop): the run leaves you its best evaluation's policy.
                arm = arm.assign(gold_at_budget=arm["gold_returned"])
            arms.append({"name": name, "condition": str(base["condition"].iloc[0]), "arm": arm, "base": base,
                         "paired": False})  # fmt: skip
    for a in arms:
        a["best_beta"] = best_beta(runs, a["condition"])
    return arms


def remedy_settings(remedies: dict | None) -> set[str]:
    return {setting for pairs in (remedies or {}).values() for setting in pairs}


def d_grid_endpoints(d_grid) -> tuple[str, ...]:
    return tuple(f"gold_at_d{d:g}" for d in d_grid)


def remedies_family(arms: list[dict], alpha: float, d_grid=()) -> pd.DataFrame:
    """One row per arm and endpoint (:data:`ENDPOINTS`, then gold at each d of ``d_grid`` where both
    sides have it): the arm's mean [CI], its difference from the baseline [CI], p, Holm's p within
    the endpoint's family, the verdict, robustness (primary only), MDE and seeds needed; and the
    difference from the grid's best β (an estimate, no verdict). A run that never reached a distance
    has no value there, so a d-grid row counts only the seeds that reached it."""
    rows = []
    endpoints = ENDPOINTS + d_grid_endpoints(d_grid)
    for a in arms:
        for endpoint in endpoints:
            if endpoint not in a["arm"] or endpoint not in a["base"]:
                continue
            mine, base = by_seed(a["arm"], endpoint), by_seed(a["base"], endpoint)
            mine = {s: v for s, v in mine.items() if np.isfinite(v)}
            base = {s: v for s, v in base.items() if np.isfinite(v)}
            if len(mine) < 2 or len(base) < 2:
                continue
            paired = bool(a.get("paired"))
            # An early-stopping rule that never stopped before the budget in any seed returns the baseline
            # itself: no comparison to test, and none enters the family.
            identical = paired and all(mine[s] == base.get(s) for s in mine)
            d = paired_difference(mine, base) if paired else welch_difference(list(mine.values()), list(base.values()))
            if identical:
                d = replace(d, p=np.nan)
            iv = t_interval(list(mine.values()))
            sd_a, sd_b = np.std(list(mine.values()), ddof=1), np.std(list(base.values()), ddof=1)
            sd_pairs = np.std([mine[s] - base[s] for s in mine if s in base], ddof=1) if paired else np.nan
            row = {"key": f"{a['name']}.{a['condition']}", "remedy": a["name"], "condition": a["condition"],
                   "endpoint": endpoint, "mean": iv.mean, "ci_low": iv.ci_low, "ci_high": iv.ci_high, "n": iv.n,
                   "diff": d.diff, "diff_low": d.ci_low, "diff_high": d.ci_high, "p": d.p,
                   "sd_a": sd_a, "sd_b": sd_b, "sd_pairs": sd_pairs, "paired": paired, "a": mine, "b": base}  # fmt: skip
            if not a["best_beta"].empty:
                best = welch_difference(list(mine.values()), list(by_seed(a["best_beta"], endpoint).values()))
                row.update({"best_beta": str(a["best_beta"]["setting"].iloc[0]), "vs_best_beta": best.diff,
                            "vs_best_beta_low": best.ci_low, "vs_best_beta_high": best.ci_high})  # fmt: skip
            for extra in ("regret", "gold_queries"):
                if extra in a["arm"]:
                    row[extra] = float(a["arm"][extra].mean())
            rows.append(row)
    family = pd.DataFrame(rows)
    if family.empty:
        return family
    family["p_holm"] = np.nan
    for endpoint in endpoints:
        mask = family["endpoint"] == endpoint
        family.loc[mask, "p_holm"] = holm(family.loc[mask, "p"])
    family["verdict"] = [verdict(d, q, alpha) if np.isfinite(p) else "identical to the baseline"
                         for d, q, p in zip(family["diff"], family["p_holm"], family["p"])]  # fmt: skip
    primary = family[(family["endpoint"] == ENDPOINTS[0]) & np.isfinite(family["p"])]
    robust = leave_one_seed_out({k: (a, b) for k, a, b in zip(primary["key"], primary["a"], primary["b"])},
                                alpha=alpha, paired=frozenset(primary.loc[primary["paired"], "key"]))  # fmt: skip
    family["robust"] = [robust.get(k) if e == ENDPOINTS[0] else None for k, e in zip(family["key"], family["endpoint"])]
    level = alpha / max(len(primary), 1)  # Holm's strictest step: the power below is a lower bound
    family["mde"], family["seeds_needed"] = zip(*(power_of(row, level) if np.isfinite(row["p"]) else (np.nan, None)
                                                  for _, row in family.iterrows()))  # fmt: skip
    return family.drop(columns=["a", "b", "sd_pairs"])


def power_of(row: pd.Series, level: float) -> tuple[float, int | None]:
    """A comparison's detectable difference at 80 % power and the seeds a difference of its observed
    size would need: from the pairs' differences where it is paired, else from each side's spread."""
    if row["paired"]:
        return (paired_mde(row["sd_pairs"], int(row["n"]), level, POWER),
                paired_seeds_needed(row["sd_pairs"], row["diff"], level, POWER))  # fmt: skip
    return (minimum_detectable_difference(row["sd_a"], len(row["a"]), row["sd_b"], len(row["b"]), level, POWER),
            seeds_needed(row["sd_a"], row["sd_b"], row["diff"], level, POWER))  # fmt: skip


def remedies_metrics(family: pd.DataFrame) -> dict:
    """metrics.json keys: remedy.<name>.<condition>.<endpoint>.{mean,ci_low,ci_high,n} and
    remedy.<name>.<condition>.<endpoint>_vs_baseline.{diff,ci_low,ci_high,p,p_holm[,robust]}."""
    out = {}
    for _, row in family.iterrows():
        key = f"remedy.{row['key']}.{row['endpoint']}"
        out.update({f"{key}.mean": row["mean"], f"{key}.ci_low": row["ci_low"], f"{key}.ci_high": row["ci_high"],
                    f"{key}.n": int(row["n"]), f"{key}_vs_baseline.diff": row["diff"],
                    f"{key}_vs_baseline.ci_low": row["diff_low"], f"{key}_vs_baseline.ci_high": row["diff_high"],
                    f"{key}_vs_baseline.p": row["p"], f"{key}_vs_baseline.p_holm": row["p_holm"]})  # fmt: skip
        if row["robust"] is not None:
            out[f"{key}_vs_baseline.robust"] = bool(row["robust"])
        for extra in ("regret", "gold_queries"):
            if extra in row and pd.notna(row[extra]):
                out[f"remedy.{row['key']}.{extra}"] = float(row[extra])
    return out


def remedies_table(family: pd.DataFrame) -> pd.DataFrame:
    """The report's view: one row per remedy, condition and endpoint."""

    def iv(lo, mid, hi):
        return f"{mid:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    rows = []
    for _, r in family.iterrows():
        rows.append({
            "remedy": r["remedy"], "condition": r["condition"], "endpoint": ENDPOINT_NAMES.get(r["endpoint"], r["endpoint"]),
            "n": int(r["n"]),
            "mean [95 % CI]": f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            "vs β = 0 single RM": iv(r["diff_low"], r["diff"], r["diff_high"]),
            "Holm p": f"{r['p_holm']:.3g}" if np.isfinite(r["p_holm"]) else "— (not tested)", "verdict": r["verdict"],
            "robust": "—" if r["robust"] is None or pd.isna(r["robust"]) else ("yes" if r["robust"] else "no"),
            "detectable (80 %)": f"±{r['mde']:.3f}" if np.isfinite(r["mde"]) else "—",
            "seeds needed": "—" if not np.isfinite(r["p"]) else (str(int(r["seeds_needed"])) if pd.notna(r["seeds_needed"])
                                                                 else "> 10,000"),
            "vs best β": (f"{iv(r['vs_best_beta_low'], r['vs_best_beta'], r['vs_best_beta_high'])} ({r['best_beta']})"
                          if pd.notna(r.get("vs_best_beta", np.nan)) else "— (no β > 0 grid)"),
            "regret": f"{r['regret']:.3f}" if pd.notna(r.get("regret", np.nan)) else "— (not a stopping rule)",
            "gold queries": f"{r['gold_queries']:.0f}" if pd.notna(r.get("gold_queries", np.nan)) else "—",
        })  # fmt: skip
    return pd.DataFrame(rows)


def iterated_form(runs: pd.DataFrame, hist: pd.DataFrame, rl: dict) -> pd.DataFrame:
    """Gao et al.'s iterated form against the rounds of iterated RLHF, one row per setting and round.

    Only settings that continue the last round's policy (``round_start: last``) are the form's premise:
    the distance d accumulates over the rounds. Per round: the seeds' mean d = √KL and gold gain at
    the round's last evaluation, the gain the form predicts there from the condition's single-round
    fit ``rl`` (α, β of the β = 0 single-RM runs) with k = the round, and with k = 1 (no iteration
    bonus); and the form refitted to the setting's own evaluations with k = each evaluation's round,
    against the same points fitted with k = 1 (R² of each).
    """
    iterated = runs[runs.get("round_start", pd.Series(index=runs.index, dtype=object)) == "last"]
    rows = []
    for setting, group in iterated.groupby("setting", sort=False):
        h = hist[hist["run"].isin(group["run"])].sort_values(["run", "step"])
        base = rl.get(str(group["condition"].iloc[0]))
        refit = fit_gao_rl_iterated(h["d"], h["gold_gain"], h["round"])
        plain = fit_gao_rl_iterated(h["d"], h["gold_gain"], np.ones(len(h)))
        ends = h.groupby(["run", "round"]).tail(1).groupby("round")
        for r, end in ends:
            row = {"setting": setting, "round": int(r), "seeds": int(end["run"].nunique()),
                   "d": float(end["d"].mean()), "gold_gain": float(end["gold_gain"].mean())}  # fmt: skip
            if base:  # each seed's prediction at its own d, averaged like the measurement
                for label, k in (("predicted (k = round)", r), ("predicted (k = 1)", 1)):
                    row[label] = float(np.mean(gao_rl_iterated(end["d"], base["alpha"], base["beta"], k)))
            row.update({"refit α": refit["alpha"], "refit β": refit["beta"], "refit R² (k = round)": refit["r2"],
                        "refit R² (k = 1)": plain["r2"]})  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def warm_best_of_n(bon_prompts: pd.DataFrame | None, alpha: float) -> pd.DataFrame:
    """WARM as a best-of-n objective against the single RM at the largest n, per condition: the paired
    difference over prompts (same samples), Holm over the conditions, and the verdict."""
    rows = pd.DataFrame(bon_comparisons(bon_prompts, objectives=("warm",)))
    if rows.empty:
        return rows
    rows["p_holm"] = holm(rows["p"])
    rows["verdict"] = [verdict(d, q, alpha) for d, q in zip(rows["diff"], rows["p_holm"])]
    return rows


def warm_best_of_n_metrics(rows: pd.DataFrame) -> dict:
    """remedy.warm.<condition>.bon_gold_max_n_vs_single.{diff,ci_low,ci_high,p,p_holm}."""
    return {f"remedy.warm.{r['condition']}.bon_gold_max_n_vs_single.{k}": float(r[k])
            for _, r in rows.iterrows() for k in ("diff", "ci_low", "ci_high", "p", "p_holm")}  # fmt: skip
