"""Every optimiser on one gold (report section 9): each at its least-regularised setting, its gold peak
and KL there, Gao's RL form fitted over its seeds, its cost, and its gold peak against PPO's (Holm over
the optimisers compared, a family of its own, outside the primary one)."""

from __future__ import annotations

import pandas as pd

from rlhf_lab.analysis.comparisons import fmt_interval
from rlhf_lab.analysis.findings import fmt_p
from rlhf_lab.analysis.fits import rl_fits
from rlhf_lab.analysis.stats import bootstrap_mean_interval, holm, t_interval, verdict, welch_difference

FRONTIER_ORDER = ("ppo", "rloo", "grpo", "dpo", "ipo")


def frontier_runs(runs: pd.DataFrame, first: str) -> pd.DataFrame:
    """Each optimiser's least-regularised setting (its smallest β; single RM, the first condition, no
    adaptive controller): the runs that put the optimisers on one gold-vs-d frontier."""
    pool = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
    picked = [group[group["beta"] == group["beta"].min()] for _, group in pool.groupby("algorithm", sort=False)]
    return pd.concat(picked) if picked else pool


def cost_columns(group: pd.DataFrame) -> dict:
    """A setting's cost per run, mean over its seeds (where the runs recorded it)."""
    columns = {"models_in_memory": "models held", "peak_rss_mb": "peak memory (MB)", "wall_s": "wall s / run",
               "responses_generated": "responses generated"}  # fmt: skip
    return {label: round(float(group[key].mean()), 1) for key, label in columns.items() if key in group}


def frontier(runs: pd.DataFrame, hist: pd.DataFrame, first: str, alpha: float) -> tuple[pd.DataFrame, dict]:
    """Per optimiser: gold peak and KL at the peak (mean [95 % CI], n), the RL form fitted over its
    seeds (α, β with bootstrap CIs, R²), and its gold peak against PPO's (Welch; Holm over the
    optimisers compared, a family of its own). Returns (table, metrics.json keys ``frontier.*``)."""
    chosen = frontier_runs(runs, first)
    algorithms = [a for a in FRONTIER_ORDER if a in set(chosen["algorithm"])]
    rows, metrics, tests = [], {}, []
    for algorithm in algorithms:
        group = chosen[chosen["algorithm"] == algorithm]
        curves = {int(r["seed"]): (h["d"].to_numpy(), h["gold_gain"].to_numpy())
                  for _, r in group.iterrows() for h in [hist[hist["run"] == r["run"]].sort_values("step")]}  # fmt: skip
        fit = rl_fits(curves) if len(curves) >= 1 else None
        peak, kl = t_interval(group["gold_peak"]), bootstrap_mean_interval(group["gold_peak_kl"])
        rows.append({"optimiser": algorithm, "setting": group["setting"].iloc[0], "β": float(group["beta"].iloc[0]),
                     "n": len(group), "gold peak [95 % CI]": fmt_interval(peak), "KL at peak [95 % CI]": fmt_interval(kl),
                     "fit α [CI]": f"{fit['alpha']:.3f} [{fit['alpha_ci'][0]:.3f}, {fit['alpha_ci'][1]:.3f}]",
                     "fit β [CI]": f"{fit['beta']:.3f} [{fit['beta_ci'][0]:.3f}, {fit['beta_ci'][1]:.3f}]",
                     "fit R²": round(fit["r2"], 3), **cost_columns(group)})  # fmt: skip
        metrics.update({f"frontier.{algorithm}.gold_peak.{k}": v for k, v in peak.to_dict().items()})
        metrics.update({f"frontier.{algorithm}.kl_at_peak.{k}": v for k, v in kl.to_dict().items()})
        metrics.update({f"frontier.{algorithm}.fit.{k}": fit[k] for k in ("alpha", "beta", "r2")})
        if algorithm != "ppo" and "ppo" in algorithms:
            ppo = chosen[chosen["algorithm"] == "ppo"]["gold_peak"]
            tests.append((algorithm, welch_difference(group["gold_peak"], ppo)))
    adjusted = holm([d.p for _, d in tests]) if tests else []
    table = pd.DataFrame(rows)
    for (algorithm, d), q in zip(tests, adjusted):
        outcome = verdict(d.diff, q, alpha)
        table.loc[table["optimiser"] == algorithm, "gold peak vs PPO"] = (
            f"{d.diff:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], Holm p {fmt_p(q)}: {outcome}")  # fmt: skip
        metrics.update({f"frontier.{algorithm}.gold_peak_vs_ppo.{k}": v
                        for k, v in (("diff", d.diff), ("p", d.p), ("p_holm", float(q)), ("verdict", outcome))})  # fmt: skip
    return table.fillna(""), metrics
