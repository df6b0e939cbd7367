"""Report stage: the over-optimisation, ensemble, β-ablation, reward-model and sweep analyses.

Reads the runs' files (never the MLflow UI) and writes, under ``paths.report``: ``report.html``
(self-contained: figures embedded), ``figures/*.png``, ``metrics.json`` (headline numbers) and
``plots/*.csv`` (curves declared as DVC plots).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab import config as config_lib
from rlhf_lab.analysis import distinct_n, fit_gao, gao_bon, gao_rl, rl_fits
from rlhf_lab.comparisons import (
    OBJECTIVE_NAMES,
    comparison_table,
    d_band,
    ensemble_comparison,
    fmt_interval,
    member_agreement,
    seed_band,
)
from rlhf_lab.config import Config, UserError
from rlhf_lab.findings import (
    add_endpoints,
    ensemble_table,
    family_metrics,
    finding,
    overoptimisation_counts,
    primary_family,
    replication,
    seed_fit_table,
    sweep_against_grid,
)
from rlhf_lab.data import read_jsonl, write_json
from rlhf_lab.gold import gold_kind
from rlhf_lab.stage import replacing_dir, stage_main
from rlhf_lab.stats import Difference, bootstrap_mean_interval, t_interval


# ------------------------------------------------------------------------------------------ loading
def load_runs(ppo_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per PPO run: setting, condition, beta, objective, adaptive, seed, metrics…; the eval
    history of every run). A setting is one ``ppo_runs`` entry; it has one run per seed."""
    runs, histories = [], []
    seed_dirs = sorted(ppo_dir.glob("*/seeds/seed_*"), key=lambda p: (p.parts[-3], int(p.name.split("_")[1])))
    for path in (p for p in seed_dirs if (p / "eval_history.csv").is_file()):
        cfg = config_lib.load(path / "config.yaml")
        meta = {"setting": path.parts[-3], "condition": Path(cfg.paths.reward).name, "beta": cfg.ppo.beta,
                "objective": cfg.ppo.reward_objective, "adaptive": cfg.ppo.adaptive_kl, "seed": cfg.ppo.seed}  # fmt: skip
        meta["run"] = f"{meta['setting']}/seed_{meta['seed']}"
        metrics = json.loads((path / "metrics.json").read_text())
        final = read_jsonl(path / "final_samples.jsonl")
        texts = [r["response"] for r in final]
        runs.append({**meta, **metrics, "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                     "path": str(path)})  # fmt: skip
        history = pd.read_csv(path / "eval_history.csv").assign(**meta)
        history["d"] = np.sqrt(history["kl"].clip(lower=0))
        if "gold" in history:
            history["gold_gain"] = history["gold"] - history["gold"].iloc[0]
        histories.append(history)
    if not runs:
        raise UserError(f"{ppo_dir}: no PPO runs to report (run the ppo stages first)")
    runs = pd.DataFrame(runs)
    if "gold_peak" in runs:
        runs["gold_drop"] = runs["gold_peak"] - runs["gold_final"]
    return runs, pd.concat(histories, ignore_index=True)


# ------------------------------------------------------------------------------------------ figures
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


def overoptimisation(hist: pd.DataFrame, bon: pd.DataFrame, first: str, fig_dir: Path):
    """Gold and proxy vs d for the β grid (averaged on d over seeds) and best-of-n, with the Gao fits;
    the RL form fitted to the β = 0 single-RM runs of every condition."""
    kl_runs = hist[(hist["objective"] == "single") & (hist["condition"] == first)]
    zero_single = hist[(hist["objective"] == "single") & (hist["beta"] == 0) & ~hist["adaptive"]]
    rl = {condition: rl_fits([(g["d"].to_numpy(), g["gold_gain"].to_numpy()) for _, g in group.groupby("run")])
          for condition, group in zero_single.groupby("condition", sort=False)}  # fmt: skip
    zero = zero_single[zero_single["condition"] == first]
    rl_fit = rl[first]
    single = bon[(bon["objective"] == "single") & (bon["condition"] == first)].copy()
    single["d"] = np.sqrt(single["kl_exact"])
    single["gold_gain"] = single["gold"] - single["gold"].iloc[0]
    bon_fit = fit_gao(single["d"], single["gold_gain"], "bon")

    def draw(axes):
        ax = axes[0]
        draw_d_bands(ax, kl_runs, "gold")
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

    return figure(fig_dir / "overoptimisation.png", draw, ncols=3, width=18), rl, bon_fit


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
            line = ax.plot(group["n"], group["gold"], "o-" if condition == conditions[0] else "s--", ms=3,
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
            draw_bands(ax, seed_band(trade, column, x="step"), "step", column, palette="viridis")
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
                    title="Proxy–gold agreement on β = 0 policy samples")
        axes[2].legend(fontsize=6)

    return figure(fig_dir / "reward_models.png", draw, ncols=3, width=17), scaling


def sweep_figure(trials: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    # Columns named by the study's metric names (set_metric_names): value_gold_final, or values_* when
    # multi-objective.
    value = "value_gold_final" if "value_gold_final" in trials else "values_gold_final"

    def draw(axes):
        sns.scatterplot(data=trials, x="params_beta", y="params_clip_eps", hue=value, style="state", s=90,
                        palette="viridis", ax=axes[0])
        axes[0].set(xscale="log", xlabel="β", ylabel="clip ε", title="Optuna trials (colour: gold)")
        if "values_kl_final" in trials:  # multi-objective: the Pareto front
            sns.scatterplot(data=trials, x="values_kl_final", y=value, hue="pareto", ax=axes[1])
            axes[1].set(xlabel="final KL", ylabel="final gold", title="Pareto front (gold ↑, KL ↓)")
        else:
            sns.scatterplot(data=trials, x="params_beta", y=value, hue="state", ax=axes[1], s=60)
            axes[1].set(xscale="log", xlabel="β", ylabel="gold (final; last reported if pruned)",
                        title="Trial outcome vs β")

    return figure(fig_dir / "sweep.png", draw)


# ------------------------------------------------------------------------------------------ tables
def training_table(hist: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Step | Reward | KL | Combined | Gold of one setting, each the mean over its seeds."""
    h = hist[hist["setting"] == setting].assign(combined=lambda f: f["proxy"] - f["beta"] * f["kl"])
    mean = h.groupby("step")[["proxy", "kl", "combined", "gold"]].mean().reset_index()
    return pd.DataFrame({"Step": mean["step"], "Reward": mean["proxy"], "KL": mean["kl"],
                         "Combined": mean["combined"], "Gold": mean["gold"]}).round(3)  # fmt: skip


def hacking_table(runs: pd.DataFrame, hacking: str, best: str, n: int) -> pd.DataFrame:
    """Samples at step 0 and at the end of the hacking setting's first seed, and of the best setting."""
    first_seed = lambda setting: Path(runs[runs["setting"] == setting].sort_values("seed")["path"].iloc[0])  # noqa: E731
    rows, best_rows = (read_jsonl(first_seed(name) / "samples.jsonl") for name in (hacking, best))
    last, best_last = max(r["step"] for r in rows), max(r["step"] for r in best_rows)
    out = []
    for label, source, step in (("SFT (step 0)", rows, 0), (f"{hacking}, step {last}", rows, last),
                                (f"{best} (best final gold), step {best_last}", best_rows, best_last)):  # fmt: skip
        for r in [r for r in source if r["step"] == step][:n]:
            out.append({"policy": label, "prompt": r["prompt"], "response": r["response"],
                        "proxy": r["proxy"], "gold": r["gold"]})  # fmt: skip
    return pd.DataFrame(out)


# Below this many complete trials fANOVA importances of two parameters are noise: not shown.
MIN_TRIALS_FOR_IMPORTANCE = 10


def importances(sweep_dir: Path, storage: str | None, study_name: str) -> tuple[pd.DataFrame | None, str]:
    """(parameter importances or None, a sentence saying what was computed and on how many trials)."""
    import optuna

    url = storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
        complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        if complete < MIN_TRIALS_FOR_IMPORTANCE:
            return None, (f"Parameter importances are not shown: {complete} complete trials, fewer than the "
                          f"{MIN_TRIALS_FOR_IMPORTANCE} they need to mean something.")  # fmt: skip
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, KeyError) as err:  # multi-objective...
        return None, f"Parameter importances not computed: {err}"
    frame = pd.DataFrame([{"parameter": k, "importance": round(v, 2)} for k, v in values.items()])
    return frame, f"Parameter importances (fANOVA) over {complete} complete trials."


def rounded_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials table at meaningful precision: parameters to 3 significant digits, scores to 3 decimals."""
    frame = trials.drop(columns=[c for c in trials if c.startswith(("datetime", "duration", "system"))])
    for column in [c for c in frame if c.startswith("params_")]:
        frame[column] = frame[column].map(lambda x: float(f"{x:.3g}") if pd.notna(x) else x)
    return frame


# ------------------------------------------------------------------------------------------ page
def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="t", escape=False)


def fmt_fit(fit: dict) -> str:
    text = (f"α = {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, β = {fit['beta']:.3f} ± {fit['beta_se']:.3f} (± fit s.e.), "
            f"R² = {fit['r2']:.3f} ({fit['points']} points)")  # fmt: skip
    if "alpha_ci" in fit:
        text += (f"; 95 % bootstrap CI over {fit['n_seeds']} seeds: α [{fit['alpha_ci'][0]:.3f}, {fit['alpha_ci'][1]:.3f}],"
                 f" β [{fit['beta_ci'][0]:.3f}, {fit['beta_ci'][1]:.3f}]")  # fmt: skip
    return text + f"; predicted peak at KL = {fit['peak_kl']:.2f} nats (gain {fit['peak_gain']:+.3f})"


METHODS = (
    "<p><b>Design and statistics.</b> Each setting runs under several seeds (the policy's sampling and the prompt "
    "order). A run stops at its first evaluation whose KL to SFT reaches <code>ppo.kl_budget</code>, or at the "
    "iteration cap, so that every objective gets the same distance budget. The endpoints were declared before the "
    "data: per run, the gold peak, the KL at the peak, gold where the run first reaches each distance of "
    "<code>report.d_grid</code> (d = √KL, interpolated between evaluations), the final gold at the budget and the "
    "gold drop (peak − final). The primary family has one endpoint per question: the gold peak of each ensemble "
    "objective against the single RM of its condition; the final gold of each β against β = 0; best-of-n gold at "
    "the largest n of each objective against the single RM, per condition, paired over prompts (95 % bootstrap "
    "interval over prompts, sign-flip permutation p). Over seeds, differences are Welch's t (unequal variances; "
    "interval and two-sided p; seeds are independent runs). Holm's step-down correction over the whole primary "
    "family keeps the family-wise error at <code>report.alpha</code>; \"supported\" means after it, and a "
    "supported negative difference is reported as a harm. Secondary endpoints are shown as estimates with "
    "intervals and no verdict. Power: the difference each comparison detects with 80 % power at Holm's strictest "
    "level α/m (a lower bound on the corrected test's power), from the observed spread; seeds needed: per side, "
    "for a difference of the observed size at that level. Robust: the verdict is unchanged with any one seed "
    "left out of every setting (Holm recomputed each time). Curves against d are each seed's curve interpolated "
    "on a common d grid and averaged where at least two seeds reach that d (95 % t band; with five seeds or fewer "
    "each seed is drawn thin); step-aligned curves (training) average the seeds at shared steps. Gao et al. fits "
    "pool the seeds' points, with a percentile bootstrap over seeds for α and β.</p>"
)


def findings_section(runs: pd.DataFrame, rl: dict, counts: pd.DataFrame, family: pd.DataFrame, bon: pd.DataFrame,
                     cfg: Config) -> str:  # fmt: skip
    """The answers first: one line per primary question, each with its estimate [CI], n, Holm p and robustness."""
    r = cfg.report
    lines = []
    single = counts[(counts["objective"] == "single") & (counts["beta"] == 0)]
    over = "; ".join(f"{row['condition']}: {int(row['seeds_overoptimised'])} of {int(row['seeds'])} seeds"
                     for _, row in single.iterrows())  # fmt: skip
    fits = "; ".join(f"{c}: pooled R² = {f['r2']:.3f}" + (f", mean curve R² = {f['mean_curve']['r2']:.3f}"
                                                           if f["mean_curve"] else "")
                     + f", median seed R² = {np.median([s['r2'] for s in f['per_seed']]):.2f}" for c, f in rl.items())  # fmt: skip
    lines.append(f"Does the single RM over-optimise at β = 0 (gold falls ≥ {r.overopt_drop:g} from its peak while the "
                 f"proxy rises)? {over}. Gao's RL form d(α − β log d): {fits}.")  # fmt: skip
    for question in ("beta", "ensemble", "bon"):
        lines += [finding(row, r.alpha) for _, row in family[family["question"] == question].iterrows()]
    for condition, group in bon[bon["objective"] == "single"].groupby("condition", sort=False):
        fit = fit_gao(np.sqrt(group["kl_exact"]), group["gold"] - group["gold"].iloc[0], "bon")
        top = int(group["n"].max())
        where = (f"beyond n = {top} (KL {fit['peak_kl']:.2f} nats against {group['kl_exact'].max():.2f} at n = {top})"
                 if fit["peak_kl"] > group["kl_exact"].max() else f"inside the data (KL {fit['peak_kl']:.2f} nats)")  # fmt: skip
        lines.append(f"{condition}: best-of-n by the single RM, Gao's form d(α − β d) puts the gold peak {where}.")
    if not family.empty:
        m, supported = int(family["family_size"].iloc[0]), int((family["verdict"] != "not supported").sum())
        robust = int((family["robust"] & (family["verdict"] != "not supported")).sum())
        lines.append(f"Primary family: {m} comparisons, Holm at {r.alpha:g}; {supported} supported, {robust} of them "
                     "robust to leaving any one seed out. The rest are not findings of this run.")  # fmt: skip
    return "<h2>Findings</h2><ul>" + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def design_metrics(runs: pd.DataFrame, rl: dict, counts: pd.DataFrame, family: pd.DataFrame, first: str) -> dict:
    """metrics.json keys of the declared design: endpoints by objective, the RL fits' checks, the primary family."""
    from rlhf_lab.findings import zero_beta

    metrics = family_metrics(family)
    for (condition, objective), group in zero_beta(runs).groupby(["condition", "objective"], sort=False):
        for column in ["gold_peak", "gold_peak_kl", *[c for c in runs if c.startswith("gold_at_d")]]:
            metrics.update({f"ensemble.{condition}.{objective}.{column}.{k}": v
                            for k, v in t_interval(group[column]).to_dict().items()})  # fmt: skip
    for condition, fit in rl.items():
        row = counts[(counts["condition"] == condition) & (counts["objective"] == "single") & (counts["beta"] == 0)]
        keys = {"seeds_overoptimised": int(row["seeds_overoptimised"].sum()), "seeds": int(row["seeds"].sum()),
                "per_seed_peak_in_range": all(s["peak_in_range"] for s in fit["per_seed"]),
                "r2_per_seed_min": min(s["r2"] for s in fit["per_seed"]),
                "r2_per_seed_median": float(np.median([s["r2"] for s in fit["per_seed"]])),
                "r2_mean_curve": fit["mean_curve"]["r2"] if fit["mean_curve"] else None, "r2": fit["r2"]}  # fmt: skip
        metrics.update({f"overopt.rl.{condition}.{k}": v for k, v in keys.items()})
        if condition == first:
            metrics.update({f"overopt.rl.{k}": v for k, v in keys.items() if k != "r2"})
    return metrics


def describe_gold(cfg: Config) -> str:
    kind = gold_kind(cfg)
    if kind == "builtin":
        return "gold is the task's programmatic reward"
    if kind == "callable":
        return f"gold is the callable <code>{html.escape(cfg.task.gold)}</code>"
    return f"gold is the reward model <code>{html.escape(cfg.task.gold)}</code>"


def style_page(title: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}"
             ".t{border-collapse:collapse;font-size:12px;margin:0.5em 0}.t td,.t th{padding:2px 8px;"
             "border-bottom:1px solid #ddd}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"  # fmt: skip


def proxy_only_report(cfg: Config, runs: pd.DataFrame, hist: pd.DataFrame, reward_metrics: dict) -> dict:
    """Without a gold reward: proxy and KL over training per setting, final levels over seeds and
    the reward models' held-out accuracy; the page says that gold is absent."""
    r = cfg.report
    levels = pd.DataFrame([{"setting": setting, "n": len(group),
                            **{f"{c} [95 % CI]": fmt_interval(t_interval(group[c])) for c in ("proxy_final", "kl_final")},
                            "distinct_2": round(float(group["distinct_2"].mean()), 3)}
                           for setting, group in runs.groupby("setting")])  # fmt: skip
    rm_table = pd.DataFrame([{"condition": c, "model": k, **v} for c, m in reward_metrics.items()
                             for k, v in m.items() if k.startswith(("member", "ensemble"))])  # fmt: skip
    metrics = {f"setting.{s}.{c}.mean": float(g[c].mean()) for s, g in runs.groupby("setting") for c in ("proxy_final", "kl_final")}
    metrics["gold"] = "none"
    for c, m in reward_metrics.items():
        metrics[f"rm.{c}.ensemble.accuracy"] = m["ensemble"]["rm/accuracy"]
    with replacing_dir(cfg.paths.report, merge=True) as out:
        fig_dir = out / "figures"

        def draw(axes):
            for ax, x in zip(axes, ("step", "kl")):
                draw_bands(ax, seed_band(hist, "proxy", x=x), x, "proxy")
                ax.set(xlabel="PPO iteration" if x == "step" else "KL(π‖π_SFT) (nats)", ylabel="proxy reward",
                       title=f"proxy vs {x} (mean, 95 % band over seeds)")
            axes[0].legend(fontsize=6)

        png = figure(fig_dir / "proxy.png", draw)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")
        sections = [
            f"<h1>{html.escape(r.title)}</h1>",
            "<p><b>Gold is absent</b> (<code>task.gold</code> is none): over-optimisation cannot be measured "
            "without a reference reward, so this report shows what the runs do measure: the proxy reward the "
            "policies were trained on, their KL from the SFT policy, and the reward models' accuracy on held-out "
            "preference pairs. Set <code>task.gold</code> to a reward model or a <code>module:function</code> "
            "for the proxy-vs-gold analyses.</p>",
            METHODS, "<h2>Proxy reward and KL</h2>", embed(png), table(levels),
            "<h2>Reward models (held-out pairs)</h2>", table(rm_table),
        ]
        (out / "report.html").write_text(style_page(r.title, sections))
    return metrics


def run(cfg: Config) -> dict:
    ppo_dir, r = Path(cfg.paths.ppo), cfg.report
    runs, hist = load_runs(ppo_dir)
    conditions = list(cfg.reward_conditions)
    first = conditions[0]
    reward_metrics = {c: json.loads((Path(cfg.for_condition(c).paths.reward) / "metrics.json").read_text())
                      for c in conditions}  # fmt: skip
    if "gold" not in hist:
        return proxy_only_report(cfg, runs, hist, reward_metrics)
    bon = pd.read_csv(Path(cfg.paths.best_of_n) / "bon.csv")
    bon_prompts_csv = Path(cfg.paths.best_of_n) / "bon_prompts.csv"
    bon_prompts = pd.read_csv(bon_prompts_csv) if bon_prompts_csv.is_file() else None
    calibration = pd.read_csv(Path(cfg.for_condition(first).paths.reward) / "calibration.csv")
    sweep_dir = Path(cfg.paths.sweep)
    trials = pd.read_csv(sweep_dir / "trials.csv")
    sweep_metrics = json.loads((sweep_dir / "metrics.json").read_text())
    for name in (r.default_run, r.hacking_run):
        if name not in set(runs["setting"]):
            raise UserError(f"report.default_run/hacking_run: no PPO setting named {name!r}; "
                            f"settings: {', '.join(runs['setting'].unique())}")  # fmt: skip

    runs = add_endpoints(runs, hist, r.d_grid, r.overopt_drop)
    family = primary_family(runs, bon_prompts, first, r.alpha)
    replicated, replication_metrics = (replication(runs, bon_prompts, first, r.alpha, r.seed_sets) if r.seed_sets
                                       else (pd.DataFrame(), {}))  # fmt: skip
    counts = overoptimisation_counts(runs)

    with replacing_dir(cfg.paths.report, merge=True) as out:  # reports/README.md stays
        fig_dir = out / "figures"
        overopt_png, rl, bon_fit = overoptimisation(hist, bon, first, fig_dir)
        rl_fit = rl[first]
        ensembles_png = ensembles(hist, bon, fig_dir)
        beta_png, beta_summary, trade = beta_ablation(runs, hist, first, fig_dir)
        rm_png, scaling = rm_quality(reward_metrics, calibration, hist, fig_dir)
        sweep_png = sweep_figure(trials, fig_dir)
        comparison = ensemble_comparison(runs, hist, r.matched_kl)
        agreement = member_agreement(runs)
        setting_gold = runs.groupby("setting")["gold_final"].mean()
        best_setting = setting_gold.idxmax()
        metrics = headline_metrics(rl_fit, bon_fit, comparison, beta_summary, sweep_metrics, first)
        metrics.update(design_metrics(runs, rl, counts, family, first))
        metrics.update(replication_metrics)
        metrics.update({"best_run": best_setting, "best_run.gold_final": float(setting_gold.max())})
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

        plots = out / "plots"
        plots.mkdir()
        hist[["run", "setting", "seed", "step", "kl", "d", "gold", "proxy", "disagreement"]].to_csv(plots / "ppo_curves.csv", index=False)
        bon.to_csv(plots / "best_of_n.csv", index=False)
        fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
        fixed[["run", "seed", "beta", "gold_final", "proxy_final", "kl_final", "distinct_2"]].to_csv(plots / "beta_ablation.csv", index=False)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")

        run_table = runs[["setting", "seed", "gold_initial", "gold_peak", "gold_peak_kl", "gold_final",
                          "proxy_final", "kl_final", "distinct_1", "distinct_2"]].round(3)  # fmt: skip
        beta_table = pd.DataFrame({"β": beta_summary["beta"], "n": [iv.n for iv in beta_summary["gold_final"]],
                                   **{f"{c} [95 % CI]": beta_summary[c].map(fmt_interval) for c in
                                      ("gold_final", "gold_peak", "proxy_final", "kl_final", "distinct_2")}})  # fmt: skip
        best_trial = sweep_metrics.get("sweep.best.trial")
        trial_finals = [json.loads(p.read_text())["gold_final"] for p in
                        sorted((sweep_dir / "trials" / f"trial_{best_trial}").glob("seed_*/metrics.json"))]  # fmt: skip
        sweep_note = sweep_against_grid(trial_finals, {"beta": metrics["sweep.best.beta"] or math.nan,
                                                       "clip_eps": metrics["sweep.best.clip_eps"] or math.nan},
                                        runs, first, r.alpha) if best_trial is not None else ""  # fmt: skip
        importance_table, importance_note = importances(sweep_dir, cfg.sweep.storage, cfg.sweep.study_name)
        rm_table = pd.DataFrame([{"condition": c, "model": k, **v} for c, m in reward_metrics.items()
                                 for k, v in m.items() if k.startswith(("member", "ensemble"))])  # fmt: skip
        sections = [
            f"<h1>{html.escape(r.title)}</h1>",
            "<p>Every number below is read from the runs' files written by the pipeline "
            f"(<code>runs/</code>, <code>models/reward</code>); {describe_gold(cfg)}, proxy the "
            "learned reward model(s) used for training, normalised to mean 0 / std 1 on SFT samples.</p>",
            findings_section(runs, rl, counts, family, bon, cfg),
            *(["<p><b>Replication</b>: each primary comparison over seeds decided from each disjoint seed set "
               "alone (Holm within the set); a verdict that differs between the sets is not a finding.</p>",
               table(replicated)] if not replicated.empty else []),
            METHODS,
            "<h2>1. Over-optimisation (Gao et al. 2022)</h2>", embed(overopt_png),
            "<p><b>RL</b> (β = 0, single RM, seeds pooled; gold gain vs d): "
            + "<br>".join(f"{c}: {fmt_fit(f)}; fit to the mean curve on a common d grid: R² = "
                          f"{f['mean_curve']['r2']:.3f}" if f["mean_curve"] else f"{c}: {fmt_fit(f)}"
                          for c, f in rl.items()) + ".<br>"
            f"<b>Best-of-n</b> (SFT policy, unbiased estimator over {cfg.best_of_n.samples_per_prompt} samples "
            f"per prompt; d from the exact KL of best-of-n over the empirical sample distribution, which "
            f"differs from the bound log n − (n−1)/n only through ties): {fmt_fit(bon_fit)}.</p>",
            "<p>The RL fit of each seed alone:</p>", table(seed_fit_table(rl)),
            "<p>Seeds that over-optimised (gold fell at least "
            f"{r.overopt_drop:g} from its peak while the proxy ended above its value there), per setting:</p>",
            table(counts),
            "<h2>2. Reward-model ensembles (Coste et al. 2023)</h2>", embed(ensembles_png),
            f"<p>β = 0 runs by training objective and reward condition ({describe_conditions(cfg)}). "
            "Gold drop = peak gold − final gold of a run; gold at matched KL = the gold where the run first "
            "reaches the matched KL (interpolated between evaluations; the median KL of the condition's gold "
            f"peaks unless <code>report.matched_kl</code> is set). Uncertainty-weighted λ = {cfg.ppo.uwo_lambda}.</p>",
            "<p>The primary endpoint is the gold peak, tested against the single RM of the same condition within the "
            "primary family (Holm); gold at each distance, gold drop and KL at the peak are secondary endpoints, shown "
            "as estimates with 95 % intervals and no verdict. MDE: the difference detectable with 80 % power at "
            "Holm's strictest level from the observed seed spread; seeds needed: per side, for a difference of the "
            "observed size.</p>",
            table(ensemble_table(runs, family, r.d_grid)) if not family.empty else "<p>No β = 0 runs.</p>",
            "<p>Earlier endpoints (gold drop, gold at a matched KL; Welch, uncorrected; kept for comparison with "
            "earlier reports, no verdict):</p>",
            table(comparison_table(comparison)) if not comparison.empty else "",
            "<p>Why an ensemble can fail to help: if its members agree on the policy's samples, every aggregate "
            "(mean, worst case, variance penalty) rewards the same text. On the β = 0 policies' final samples:</p>",
            table(agreement) if not agreement.empty else "",
            "<h2>3. β ablation and the reward–KL trade-off</h2>", embed(beta_png), embed(fig_dir / "tradeoff.png"),
            table(beta_table),
            f"<h2>4. Training table ({html.escape(r.default_run)}, mean over seeds)</h2>",
            "<p>Reward = proxy score, KL in nats, Combined = Reward − β·KL (the KL-regularised objective).</p>",
            table(training_table(hist, r.default_run)),
            "<h2>5. Reward hacking in text</h2>",
            table(hacking_table(runs, r.hacking_run, best_setting, r.samples)),
            "<h2>6. Reward-model quality</h2>", embed(rm_png),
            table(scaling), table(rm_table),
            "<h2>7. Optuna study (β, clip ε)</h2>", embed(sweep_png),
            f"<p>Best: β = {fmt_sig(metrics['sweep.best.beta'])}, ε = {fmt_sig(metrics['sweep.best.clip_eps'])} "
            f"({sweep_metrics['sweep.n_trials']} trials, {sweep_metrics['sweep.n_pruned']} pruned; each trial's "
            f"objective is the mean final gold over {cfg.sweep.seeds} seed(s)). {sweep_note} {importance_note}</p>",
            table(importance_table) if importance_table is not None else "",
            table(rounded_trials(trials)),
            "<h2>8. Every run</h2>", table(run_table),
        ]
        (out / "report.html").write_text(style_page(r.title, sections))
    return metrics


def fmt_sig(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def describe_conditions(cfg: Config) -> str:
    return "; ".join(f"{name}: " + (", ".join(f"{s}.{k} = {v}" for s, keys in over.items() for k, v in keys.items())
                                    or "as params.yaml") for name, over in cfg.reward_conditions.items())  # fmt: skip


def headline_metrics(rl_fit: dict, bon_fit: dict, comparison: pd.DataFrame, beta_summary: pd.DataFrame,
                     sweep_metrics: dict, first: str) -> dict:  # fmt: skip
    """metrics.json: flat dotted keys, as `dvc metrics show` lists them."""
    metrics = {f"overopt.rl.{k}": v for k, v in rl_fit.items() if k not in ("per_seed", "mean_curve")}
    metrics.update({f"overopt.bon.{k}": v for k, v in bon_fit.items()})
    for _, row in comparison.iterrows():
        key = f"ensemble.{row['condition']}.{row['objective']}"
        for column in ("gold_drop", "gold_at_kl"):
            metrics.update({f"{key}.{column}.{k}": v for k, v in row[column].to_dict().items()})
            diff = row.get(f"{column}_vs_single")
            if isinstance(diff, Difference):
                name = "vs_single" if column == "gold_drop" else "gold_at_kl_vs_single"
                metrics.update({f"{key}.{name}.{k}": getattr(diff, k) for k in ("diff", "ci_low", "ci_high", "p", "p_permutation")})
        metrics[f"{key}.matched_kl"] = row["matched_kl"]
        if row["condition"] == first:  # the keys of one-seed reports, kept: means over seeds now
            metrics[f"ensemble.{row['objective']}.gold_drop"] = row["gold_drop"].mean
            metrics[f"ensemble.{row['objective']}.gold_final"] = row["gold_final"].mean
    for _, row in beta_summary.iterrows():
        for column in ("gold_final", "kl_final"):
            metrics.update({f"beta.{row['beta']:g}.{column}.{k}": v for k, v in row[column].to_dict().items()})
    metrics.update({
        "sweep.best.beta": sweep_metrics.get("sweep.best.beta"),
        "sweep.best.clip_eps": sweep_metrics.get("sweep.best.clip_eps"),
        "sweep.n_trials": sweep_metrics["sweep.n_trials"],
    })  # fmt: skip
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], services=("storage",))


if __name__ == "__main__":
    main()
