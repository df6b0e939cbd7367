"""The report's figures: each function draws one PNG from the runs' frames and returns its path
(plus the fits or summaries it drew, where the page prints them too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab.analysis.comparisons import OBJECTIVE_NAMES, d_band, seed_band
from rlhf_lab.analysis.findings import bon_single
from rlhf_lab.analysis.fits import gao_bon, gao_rl
from rlhf_lab.analysis.stats import bootstrap_mean_interval, t_interval


def figure(path: Path, draw, ncols: int = 2, width: float = 12, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False)
    draw(list(axes[0]))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def draw_bands(ax, band: pd.DataFrame, x: str, y: str, palette: str = "tab10", label_suffix: str = "") -> None:
    """Mean over seeds (line) and its 95 % t interval (shaded) for each setting of ``band``."""
    import seaborn as sns

    colors = dict(zip(band["setting"].unique(), sns.color_palette(palette, band["setting"].nunique())))
    for setting, group in band.groupby("setting", sort=False):
        n = int(group["n"].max())
        ax.plot(group[x], group[y], color=colors[setting], lw=1.4, label=f"{setting} (n={n}){label_suffix}")
        ax.fill_between(group[x], group["low"], group["high"], color=colors[setting], alpha=0.18, lw=0)

def draw_d_bands(ax, hist: pd.DataFrame, y: str, palette: str = "tab10") -> None:
    """Each setting's ``y`` averaged on a common d grid (mean line, 95 % band where ≥ 2 seeds reach d,
    n in the legend); with five seeds or fewer each seed's own curve is drawn thin beside the mean,
    since a t band on so few seeds spans most of the axis."""
    import seaborn as sns

    grid = np.round(np.arange(0, hist["d"].max() + 0.25, 0.25), 6)
    band, seeds = d_band(hist, y, grid)
    if band.empty:
        return
    colors = dict(zip(band["setting"].unique(), sns.color_palette(palette, band["setting"].nunique())))
    for setting, group in band.groupby("setting", sort=False):
        n = hist[hist["setting"] == setting]["seed"].nunique()
        ax.plot(group["d"], group[y], color=colors[setting], lw=1.6, label=f"{setting} (n={n})")
        ax.fill_between(group["d"], group["low"], group["high"], color=colors[setting], alpha=0.15, lw=0)
        if n <= 5:
            for _, own in seeds[seeds["setting"] == setting].groupby("seed"):
                ax.plot(own["d"], own[y], color=colors[setting], lw=0.6, alpha=0.5)

def overoptimisation(hist: pd.DataFrame, bon: pd.DataFrame, first: str, rl: dict, bon_fit: dict, fig_dir: Path) -> Path:
    """Gold and proxy vs d for the β grid (averaged on d over seeds) and best-of-n, with the Gao fits
    (``rl`` by condition, from :func:`rlhf_lab.analysis.findings.overoptimisation_fits`; drawn where there is one)."""
    kl_runs = hist[(hist["objective"] == "single") & (hist["condition"] == first)]
    zero = kl_runs[(kl_runs["beta"] == 0) & ~kl_runs["adaptive"]]
    rl_fit = rl.get(first)
    single = bon_single(bon, first)

    def draw(axes):
        ax = axes[0]
        draw_d_bands(ax, kl_runs, "gold")
        if rl_fit is not None:
            grid = np.linspace(0, zero["d"].max(), 200)
            base = zero.groupby("run")["gold"].first().mean()
            ax.plot(grid, base + gao_rl(grid, rl_fit["alpha"], rl_fit["beta"]), "k--", lw=2,
                    label=f"RL fit (β=0, {rl_fit['n_seeds']} seeds): α={rl_fit['alpha']:.2f}, β={rl_fit['beta']:.2f}")
        ax.set(xlabel="d = √KL(π‖π_SFT)", ylabel="gold score", title="PPO: gold vs distance from SFT (mean on d)")
        ax.legend(fontsize=7)
        ax = axes[1]
        draw_d_bands(ax, kl_runs, "proxy")
        ax.set(xlabel="d = √KL(π‖π_SFT)", ylabel="proxy score (training objective)",
               title="PPO: proxy vs distance from SFT (mean on d)")
        ax = axes[2]
        ax.plot(single["d"], single["gold"], "o-", label="gold (best-of-n by proxy)")
        ax.fill_between(single["d"], single["gold_ci_low"], single["gold_ci_high"], alpha=0.2, lw=0)
        ax.plot(single["d"], single["proxy"], "s-", label="proxy of the pick")
        grid = np.linspace(0, single["d"].max(), 200)
        ax.plot(grid, single["gold"].iloc[0] + gao_bon(grid, bon_fit["alpha"], bon_fit["beta"]), "k--",
                label=f"BoN fit: α={bon_fit['alpha']:.2f}, β={bon_fit['beta']:.2f}, R²={bon_fit['r2']:.2f}")
        ax.set(xlabel="d = √KL_bon (exact, empirical)", ylabel="score", title="Best-of-n on the SFT policy")
        ax.legend(fontsize=7)

    return figure(fig_dir / "overoptimisation.png", draw, ncols=3, width=18)


def ensembles(hist: pd.DataFrame, bon: pd.DataFrame, fig_dir: Path):
    """β = 0 gold vs KL by objective, one panel per condition (mean ± 95 % band), and best-of-n by objective."""
    zero = hist[(hist["beta"] == 0) & ~hist["adaptive"]]
    conditions = list(zero["condition"].unique())

    def draw(axes):
        for condition, ax in zip(conditions, axes):
            draw_bands(ax, seed_band(zero[zero["condition"] == condition], "gold", x="kl"), "kl", "gold")
            ax.set(xlabel="KL(π‖π_SFT) (nats)", ylabel="gold score", title=f"β = 0, {condition} RMs: gold vs KL")
            ax.legend(fontsize=7)
        ax = axes[-1]
        for (condition, objective), group in bon[bon["objective"] != "oracle"].groupby(["condition", "objective"]):
            line = ax.plot(group["n"], group["gold"], "o-" if condition == bon["condition"].iloc[0] else "s--", ms=3,
                           label=f"{condition}, {OBJECTIVE_NAMES[objective]}")[0]
            ax.fill_between(group["n"], group["gold_ci_low"], group["gold_ci_high"], alpha=0.12, color=line.get_color())
        ax.set(xscale="log", xlabel="n", ylabel="gold of the pick", title="Best-of-n by objective (95 % CI over prompts)")
        ns = sorted(bon["n"].unique())
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.legend(fontsize=6)

    return figure(fig_dir / "ensembles.png", draw, ncols=len(conditions) + 1, width=6 * (len(conditions) + 1))

def beta_ablation(runs: pd.DataFrame, hist: pd.DataFrame, first: str, fig_dir: Path):
    """Final gold, KL and distinct-2 vs β (mean ± 95 % t interval over seeds) and the reward–KL curves."""
    fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
    summary_rows = []
    for beta, group in fixed.groupby("beta"):
        # KL cannot be negative: a bootstrap interval of its mean stays inside the support (a t interval did not).
        summary_rows.append({"beta": beta, **{c: (bootstrap_mean_interval if c == "kl_final" else t_interval)(group[c])
                                              for c in ("gold_final", "proxy_final", "kl_final", "distinct_2", "gold_peak")}})
    summary_frame = pd.DataFrame(summary_rows)
    trade = hist[(hist["objective"] == "single") & ~hist["adaptive"] & (hist["condition"] == first)].copy()
    trade["combined"] = trade["proxy"] - trade["beta"] * trade["kl"]
    trade["setting"] = "β=" + trade["beta"].map(lambda b: f"{b:g}")

    def errorbars(ax, column, **style):
        ivs = summary_frame[column]
        means = np.array([iv.mean for iv in ivs])
        err = np.array([[iv.mean - iv.ci_low for iv in ivs], [iv.ci_high - iv.mean for iv in ivs]])
        ax.errorbar(range(len(ivs)), means, yerr=np.nan_to_num(err), capsize=4, marker="o", **style)
        ax.set_xticks(range(len(ivs)), [f"{b:g}" for b in summary_frame["beta"]])

    def draw(axes):
        errorbars(axes[0], "gold_final", label="gold")
        errorbars(axes[0], "proxy_final", label="proxy", color="tab:orange")
        axes[0].set(title="final gold and proxy (mean, 95 % CI)", xlabel="β")
        axes[0].legend(fontsize=7)
        errorbars(axes[1], "kl_final")
        axes[1].set(title="final KL (nats)", xlabel="β", yscale="symlog")
        errorbars(axes[2], "distinct_2")
        axes[2].set(title="final distinct-2", xlabel="β")
        draw_bands(axes[3], seed_band(trade, "proxy", x="kl"), "kl", "proxy", palette="viridis")
        axes[3].set(xlabel="KL (nats)", ylabel="proxy reward", title="reward–KL trade-off (mean over seeds)")
        axes[3].legend(fontsize=6)

    def draw_steps(axes):
        for column, ax, label in zip(("proxy", "kl", "combined"), axes, ("reward (proxy)", "KL (nats)", "reward − β·KL")):
            interval = bootstrap_mean_interval if column == "kl" else t_interval  # KL's band stays ≥ 0
            draw_bands(ax, seed_band(trade, column, x="step", interval=interval), "step", column, palette="viridis")
            ax.set(xlabel="PPO iteration", ylabel=label, title=f"{label} over training (mean, 95 % band)")
        axes[0].legend(fontsize=6)
        axes[1].set_yscale("symlog")
        axes[1].set_ylim(bottom=0)

    figure(fig_dir / "tradeoff.png", draw_steps, ncols=3, width=17)
    return figure(fig_dir / "beta_ablation.png", draw, ncols=4, width=18), summary_frame, trade

def rm_quality(reward_metrics: dict[str, dict], calibration: pd.DataFrame, hist: pd.DataFrame, fig_dir: Path):
    """Accuracy vs pairs and calibration of the first condition's models; proxy–gold agreement as the policy moves."""
    first = next(iter(reward_metrics))
    scaling = pd.DataFrame([{"pairs": int(k), "accuracy": v} for k, v in reward_metrics[first].get("scaling", {}).items()
                            if v is not None]).sort_values("pairs")  # fmt: skip
    zero = hist[(hist["beta"] == 0) & ~hist["adaptive"]]
    which = "β = 0 policy samples" if not zero.empty else "policy samples (no β = 0 run)"
    zero = zero if not zero.empty else hist

    def draw(axes):
        axes[0].plot(scaling["pairs"], scaling["accuracy"], "o-")
        axes[0].set(xscale="log", xlabel="preference pairs", ylabel="held-out accuracy (gold labels)",
                    title=f"Reward model ({first}): accuracy vs data")
        axes[0].set_xticks(scaling["pairs"], [str(n) for n in scaling["pairs"]], minor=False)
        axes[0].minorticks_off()
        axes[1].plot([0.5, 1], [0.5, 1], "k:")
        axes[1].scatter(calibration["confidence"], calibration["accuracy"], s=10 + calibration["count"] / 3)
        axes[1].set(xlabel="predicted P(chosen ≻ rejected)", ylabel="observed frequency",
                    title=f"Ensemble calibration, {first} (ECE {reward_metrics[first]['ensemble']['rm/ece']:.3f})")
        draw_bands(axes[2], seed_band(zero, "proxy_gold_spearman", x="kl"), "kl", "proxy_gold_spearman")
        axes[2].set(xlabel="KL (nats)", ylabel="Spearman(proxy member 0, gold)",
                    title=f"Proxy–gold agreement on {which}")
        axes[2].legend(fontsize=6)

    return figure(fig_dir / "reward_models.png", draw, ncols=3, width=17), scaling

def sweep_figure(trials: pd.DataFrame, fig_dir: Path):
    """The Optuna trials over (β, ε) coloured by final gold, and gold against β (or the Pareto front)."""
    import seaborn as sns

    # Columns named by the study's metric names (set_metric_names): value_gold_final, or values_* when
    # multi-objective; the figure names them as the report's text does.
    value = "value_gold_final" if "value_gold_final" in trials else "values_gold_final"
    shown = trials.rename(columns={value: "final gold", "params_beta": "β", "params_clip_eps": "clip ε",
                                   "values_kl_final": "final KL", "state": "trial"})  # fmt: skip

    def draw(axes):
        sns.scatterplot(data=shown, x="β", y="clip ε", hue="final gold", style="trial", s=90, palette="viridis", ax=axes[0])
        axes[0].set(xscale="log", title="Optuna trials (colour: final gold)")
        if "final KL" in shown:  # multi-objective: the Pareto front
            sns.scatterplot(data=shown, x="final KL", y="final gold", hue="pareto", ax=axes[1])
            axes[1].set(title="Pareto front (gold ↑, KL ↓)")
        else:
            sns.scatterplot(data=shown, x="β", y="final gold", hue="trial", ax=axes[1], s=60)
            axes[1].set(xscale="log", ylabel="final gold (last reported if pruned)", title="Trial outcome vs β")
        for ax in axes:  # beside the axes, not over the points
            if ax.get_legend() is not None:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), fontsize=7, title_fontsize=7)

    return figure(fig_dir / "sweep.png", draw)


def frontier_figure(hist: pd.DataFrame, fig_dir: Path) -> Path:
    """Gold and proxy vs d, one line per optimiser's setting (mean on d over seeds, 95 % band)."""

    def draw(axes):
        for ax, y, label in zip(axes, ("gold", "proxy"), ("gold score", "proxy score")):
            draw_d_bands(ax, hist, y)
            ax.set(xlabel="d = √KL(π‖π_SFT)", ylabel=label, title=f"Every optimiser: {label} vs distance from SFT")
            ax.legend(fontsize=7)

    return figure(fig_dir / "frontier.png", draw)
