"""The report's figures: each function draws one PNG from the runs' frames and returns its path
(plus the fits or summaries it drew, where the page prints them too).

Every figure is sized for the page (two panels a row, 11 in × 110 dpi ≈ the page's 1,250 px), names
settings by :func:`rlhf_lab.analysis.labels.setting_labels` (the caller passes frames whose ``setting``
column already holds those labels), draws curves against distance on d = √KL, and takes its y-range
from the means and their drawn bands (:func:`rlhf_lab.analysis.comparisons.y_limits`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab.analysis.comparisons import OBJECTIVE_NAMES, d_band, seed_band, y_limits
from rlhf_lab.analysis.findings import bon_single
from rlhf_lab.analysis.fits import MIN_FIT_R2, gao_bon, gao_rl
from rlhf_lab.analysis.stats import bootstrap_mean_interval, t_interval

PAGE_WIDTH_IN, DPI, PER_ROW = 11.0, 110, 2
D_LABEL = "d = √KL(π‖π_SFT)"


def figure(path: Path, draw, panels: int = 2, height: float = 3.9):
    """A figure of ``panels`` axes, two a row, as wide as the page; ``draw`` gets the axes in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)
    ncols = min(panels, PER_ROW)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE_WIDTH_IN, height * nrows), squeeze=False)
    axes = list(axes.flat)
    for spare in axes[panels:]:
        spare.remove()
    draw(axes[:panels])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def set_ylim(ax, band: pd.DataFrame, y: str, extra: list[float] = ()) -> None:
    limits = y_limits(band, y) if not band.empty else None
    if limits is not None:
        low, high = limits
        ax.set_ylim(min([low, *extra]), max([high, *extra]))


def plain_log_ticks(ax, axis: str = "x") -> None:
    """A log axis labelled in plain numbers from the 1-2-5 series inside its range (a range inside one
    decade otherwise gets no major tick at all, and minor ticks overlap)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = ax.get_xlim() if axis == "x" else ax.get_ylim()
    series = [m * 10.0**e for e in range(-6, 7) for m in (1, 2, 5)]
    ticks = [t for t in series if low <= t <= high] or [low, high]
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(NullLocator())


def legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kwargs)


def draw_bands(ax, band: pd.DataFrame, x: str, y: str, palette: str = "tab10") -> None:
    """Mean over seeds (line) and its 95 % t interval (shaded where the band rule keeps it) for each
    setting of ``band``; the y-range from the means and bands."""
    import seaborn as sns

    if band.empty:
        return
    colors = dict(zip(band["setting"].unique(), sns.color_palette(palette, band["setting"].nunique())))
    for setting, group in band.groupby("setting", sort=False):
        n = int(group["n"].max())
        ax.plot(group[x], group[y], color=colors[setting], lw=1.4, label=f"{setting} (n={n})")
        ax.fill_between(group[x], group["low"], group["high"], color=colors[setting], alpha=0.18, lw=0)
    set_ylim(ax, band, y)


def draw_d_bands(ax, hist: pd.DataFrame, y: str, palette: str = "tab10", bounds=None) -> pd.DataFrame:
    """Each setting's ``y`` averaged on a common d grid (mean where ≥ 2 seeds reach d, 95 % band where
    ≥ 3 do, n in the legend); with five seeds or fewer each seed's own curve is drawn thin beside the
    mean. Returns the band frame (the y-range is set from it)."""
    import seaborn as sns

    if hist.empty:
        return pd.DataFrame()
    grid = np.round(np.arange(0, hist["d"].max() + 0.25, 0.25), 6)
    band, seeds = d_band(hist, y, grid, bounds=bounds)
    if band.empty:
        return band
    colors = dict(zip(band["setting"].unique(), sns.color_palette(palette, band["setting"].nunique())))
    for setting, group in band.groupby("setting", sort=False):
        n = hist[hist["setting"] == setting]["seed"].nunique()
        ax.plot(group["d"], group[y], color=colors[setting], lw=1.6, label=f"{setting} (n={n})")
        ax.fill_between(group["d"], group["low"], group["high"], color=colors[setting], alpha=0.15, lw=0)
        if n <= 5:
            for _, own in seeds[seeds["setting"] == setting].groupby("seed"):
                ax.plot(own["d"], own[y], color=colors[setting], lw=0.6, alpha=0.45)
    set_ylim(ax, band, y)
    return band


def fit_label(name: str, fit: dict) -> str:
    """A Gao fit in a legend: the form's coefficients (α_G, β_G, not the KL coefficient) and R², and
    "does not fit" where R² is under the peak rule's threshold."""
    verdict = ", does not fit" if not fit["r2"] >= MIN_FIT_R2 else ""
    return f"{name} Gao fit: α_G={fit['alpha']:.2f}, β_G={fit['beta']:.2f}, R²={fit['r2']:.2f}{verdict}"


def overoptimisation(hist: pd.DataFrame, bon: pd.DataFrame, first: str, rl: dict, bon_fit: dict, fig_dir: Path) -> Path:
    """Four panels: β = 0 single-RM gold vs d per condition with its Gao RL fit over the measured range;
    gold and proxy vs d for the β grid (first condition); best-of-n's gold on the SFT policy with its fit
    (the pick's proxy on its own axis)."""
    zero_single = hist[(hist["objective"] == "single") & (hist["beta"] == 0) & ~hist["adaptive"]]
    grid_runs = hist[(hist["objective"] == "single") & (hist["condition"] == first)]
    single = bon_single(bon, first)

    def draw(axes):
        ax = axes[0]
        draw_d_bands(ax, zero_single.assign(setting=zero_single["condition"]), "gold")  # sets the y-range: the fits don't
        for (condition, fit), color in zip(rl.items(), ("k", "tab:red", "tab:purple")):
            low, high = fit["d_range"]
            grid = np.linspace(0, high, 200)  # the measured range only: no extrapolation past the data
            base = zero_single[zero_single["condition"] == condition].groupby("run")["gold"].first().mean()
            style = "--" if fit["r2"] >= MIN_FIT_R2 else ":"
            ax.plot(grid, base + gao_rl(grid, fit["alpha"], fit["beta"]), style, color=color, lw=1.8,
                    label=fit_label(condition, fit))
        ax.set(xlabel=D_LABEL, ylabel="gold score", title="β = 0, single RM: gold vs distance, Gao RL fit per condition")
        legend(ax)
        for ax, y, label in ((axes[1], "gold", "gold score"), (axes[2], "proxy", "proxy score (training objective)")):
            draw_d_bands(ax, grid_runs, y)
            ax.set(xlabel=D_LABEL, ylabel=label, title=f"β grid ({first}): {y} vs distance from SFT")
            legend(ax)
        ax = axes[3]
        ax.plot(single["d"], single["gold"], "o-", ms=3, label="gold of the pick (95 % CI over prompts)")
        ax.fill_between(single["d"], single["gold_ci_low"], single["gold_ci_high"], alpha=0.2, lw=0)
        grid = np.linspace(0, single["d"].max(), 200)
        ax.plot(grid, single["gold"].iloc[0] + gao_bon(grid, bon_fit["alpha"], bon_fit["beta"]), "k--", lw=1.5,
                label=fit_label("best-of-n", bon_fit))
        ax.set(xlabel="d = √KL_bon (exact, empirical)", ylabel="gold score", title=f"Best-of-n on the SFT policy ({first})")
        twin = ax.twinx()
        twin.plot(single["d"], single["proxy"], "s:", ms=3, color="tab:orange", label="proxy of the pick")
        twin.set_ylabel("proxy score of the pick", color="tab:orange")
        twin.grid(False)
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")

    return figure(fig_dir / "overoptimisation.png", draw, panels=4)


def ensembles(hist: pd.DataFrame, bon: pd.DataFrame, fig_dir: Path):
    """β = 0 gold vs d by objective, one panel per condition (mean on d, band from three seeds), and
    best-of-n by objective."""
    zero = hist[(hist["beta"] == 0) & ~hist["adaptive"]]
    conditions = list(zero["condition"].unique())

    def draw(axes):
        for condition, ax in zip(conditions, axes):
            draw_d_bands(ax, zero[zero["condition"] == condition], "gold")
            ax.set(xlabel=D_LABEL, ylabel="gold score", title=f"β = 0, {condition} RMs: gold vs distance")
            legend(ax)
        ax = axes[-1]
        for (condition, objective), group in bon[bon["objective"] != "oracle"].groupby(["condition", "objective"]):
            line = ax.plot(group["n"], group["gold"], "o-" if condition == bon["condition"].iloc[0] else "s--", ms=3,
                           label=f"{condition}, {OBJECTIVE_NAMES[objective]}")[0]
            ax.fill_between(group["n"], group["gold_ci_low"], group["gold_ci_high"], alpha=0.12, color=line.get_color())
        ax.set(xscale="log", xlabel="n", ylabel="gold of the pick", title="Best-of-n by objective (95 % CI over prompts)")
        ns = sorted(bon["n"].unique())
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        legend(ax)

    return figure(fig_dir / "ensembles.png", draw, panels=len(conditions) + 1)


def beta_summary(fixed: pd.DataFrame) -> pd.DataFrame:
    """Per β: endpoints over seeds (mean, 95 % interval; KL and its like by bootstrap, which stays
    inside the support where a t interval did not)."""
    rows = []
    for beta, group in fixed.groupby("beta"):
        rows.append({"beta": beta, **{c: (bootstrap_mean_interval if c.startswith(("kl_", "distinct")) else t_interval)(group[c])
                                      for c in ("gold_at_budget", "kl_at_budget", "proxy_at_budget", "gold_final", "proxy_final",
                                                "kl_final", "distinct_2", "gold_peak") if c in group}})  # fmt: skip
    return pd.DataFrame(rows)


def beta_ablation(runs: pd.DataFrame, hist: pd.DataFrame, first: str, fig_dir: Path):
    """Gold at the budget, the proxy, the KL where each run was read (and where it stopped), and
    distinct-2 vs β (mean ± 95 % interval over seeds); the reward–KL curves over training and on d."""
    fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
    summary_frame = beta_summary(fixed)
    trade = hist[(hist["objective"] == "single") & ~hist["adaptive"] & (hist["condition"] == first)].copy()
    trade["combined"] = trade["proxy"] - trade["beta"] * trade["kl"]
    trade["setting"] = "β = " + trade["beta"].map(lambda b: f"{b:g}")

    def errorbars(ax, column, **style):
        ivs = summary_frame[column]
        means = np.array([iv.mean for iv in ivs])
        err = np.array([[iv.mean - iv.ci_low for iv in ivs], [iv.ci_high - iv.mean for iv in ivs]])
        ax.errorbar(range(len(ivs)), means, yerr=np.nan_to_num(err), capsize=4, marker="o", **style)
        ax.set_xticks(range(len(ivs)), [f"{b:g}" for b in summary_frame["beta"]])

    def draw(axes):
        errorbars(axes[0], "gold_at_budget")
        axes[0].set(title="gold at the KL budget (mean, 95 % CI)", xlabel="β", ylabel="gold score")
        errorbars(axes[1], "proxy_at_budget", color="tab:orange")
        axes[1].set(title="proxy at the KL budget (mean, 95 % CI)", xlabel="β", ylabel="proxy score")
        errorbars(axes[2], "kl_at_budget", label="where read (the budget, or the cap's stop)")
        errorbars(axes[2], "kl_final", label="last evaluation", color="tab:gray", alpha=0.7)
        axes[2].set(title="KL (nats): where gold was read, where the run stopped", xlabel="β", yscale="log")
        plain_log_ticks(axes[2], "y")
        legend(axes[2])
        errorbars(axes[3], "distinct_2", color="tab:green")
        axes[3].set(title="final distinct-2", xlabel="β", ylabel="distinct-2")

    def draw_steps(axes):
        for column, ax, label in zip(("proxy", "kl", "combined"), axes, ("reward (proxy)", "KL (nats)", "reward − β·KL")):
            interval = bootstrap_mean_interval if column == "kl" else t_interval  # KL's band stays ≥ 0
            draw_bands(ax, seed_band(trade, column, x="step", interval=interval), "step", column, palette="viridis")
            ax.set(xlabel="PPO iteration", ylabel=label, title=f"{label} over training (mean, 95 % band)")
        legend(axes[0])
        axes[1].set_yscale("symlog")
        axes[1].set_ylim(bottom=0)
        draw_d_bands(axes[3], trade, "proxy", palette="viridis")
        axes[3].set(xlabel=D_LABEL, ylabel="proxy reward", title="reward–KL trade-off (mean on d)")
        legend(axes[3])

    figure(fig_dir / "tradeoff.png", draw_steps, panels=4)
    return figure(fig_dir / "beta_ablation.png", draw, panels=4), summary_frame, trade


def rm_quality(reward_metrics: dict[str, dict], calibration: pd.DataFrame, hist: pd.DataFrame, fig_dir: Path):
    """Accuracy vs pairs and calibration of the first condition's models; proxy–gold agreement as the
    policy moves (on d, the band clipped to a correlation's [−1, 1])."""
    first = next(iter(reward_metrics))
    scaling = pd.DataFrame([{"pairs": int(k), "accuracy": v} for k, v in reward_metrics[first].get("scaling", {}).items()
                            if v is not None], columns=["pairs", "accuracy"]).sort_values("pairs")  # fmt: skip
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
        draw_d_bands(axes[2], zero, "proxy_gold_spearman", bounds=(-1.0, 1.0))
        axes[2].set(xlabel=D_LABEL, ylabel="Spearman(proxy member 0, gold)", title=f"Proxy–gold agreement on {which}")
        legend(axes[2], ncol=2)

    return figure(fig_dir / "reward_models.png", draw, panels=3), scaling


def sweep_figure(trials: pd.DataFrame, fig_dir: Path):
    """The Optuna trials over (β, ε), complete ones coloured by their final gold and pruned ones marked
    apart, and the complete trials' final gold against β (or the Pareto front). A pruned trial's last
    report is an intermediate gold, not a final one: it stays off the final-gold axis."""
    from matplotlib.ticker import FuncFormatter

    value = "value_gold_final" if "value_gold_final" in trials else "values_gold_final"
    complete = trials[trials["state"] == "COMPLETE"]
    pruned = trials[trials["state"] != "COMPLETE"]

    def draw(axes):
        ax = axes[0]
        points = ax.scatter(complete["params_beta"], complete["params_clip_eps"], c=complete[value], cmap="viridis", s=60)
        if len(pruned):
            ax.scatter(pruned["params_beta"], pruned["params_clip_eps"], marker="x", color="tab:gray", s=50,
                       label=f"pruned ({len(pruned)})")  # fmt: skip
            legend(ax, loc="upper right")
        ax.figure.colorbar(points, ax=ax, label="final gold", format=FuncFormatter(lambda v, _: f"{v:.2f}"))
        ax.set(xscale="log", xlabel="β", ylabel="clip ε", title="Optuna trials")
        ax = axes[1]
        if "values_kl_final" in trials:  # multi-objective: the Pareto front
            for front, group in complete.groupby("pareto") if "pareto" in complete else [(False, complete)]:
                ax.scatter(group["values_kl_final"], group[value], label="Pareto front" if front else "dominated")
            ax.set(xlabel="final KL (nats)", ylabel="final gold", title="Pareto front (gold ↑, KL ↓)")
            legend(ax)
        else:
            ax.scatter(complete["params_beta"], complete[value], s=40)
            ax.set(xscale="log", xlabel="β", ylabel="final gold (complete trials)",
                   title=f"Complete trials' final gold vs β ({len(pruned)} pruned not shown)")
        for a in axes:
            if a.get_xscale() == "log":
                plain_log_ticks(a, "x")

    return figure(fig_dir / "sweep.png", draw)


def frontier_figure(hist: pd.DataFrame, fig_dir: Path) -> Path:
    """Gold and proxy vs d, one line per optimiser's setting (mean on d over seeds, 95 % band)."""

    def draw(axes):
        for ax, y, label in zip(axes, ("gold", "proxy"), ("gold score", "proxy score")):
            draw_d_bands(ax, hist, y)
            ax.set(xlabel=D_LABEL, ylabel=label, title=f"Every optimiser: {label} vs distance")
            legend(ax)

    return figure(fig_dir / "frontier.png", draw)
