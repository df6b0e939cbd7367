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
from rlhf_lab.analysis import distinct_n, fit_gao, gao_bon, gao_rl
from rlhf_lab.config import Config, UserError
from rlhf_lab.data import read_jsonl, write_json
from rlhf_lab.stage import replacing_dir, stage_main

OBJECTIVE_NAMES = {"single": "single RM", "mean": "ensemble mean", "wco": "worst-case", "uwo": "uncertainty-weighted"}


# ------------------------------------------------------------------------------------------ loading
def load_runs(ppo_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per run: name, beta, objective, seed, adaptive, metrics...; eval history of all runs)."""
    runs, histories = [], []
    for path in sorted(p for p in ppo_dir.iterdir() if (p / "eval_history.csv").is_file()):
        cfg = config_lib.load(path / "config.yaml").ppo
        setting = "adaptive KL" if cfg.adaptive_kl else f"{cfg.reward_objective} β={cfg.beta:g}"
        meta = {"run": path.name, "beta": cfg.beta, "objective": cfg.reward_objective, "seed": cfg.seed,
                "adaptive": cfg.adaptive_kl, "setting": setting}  # fmt: skip
        metrics = json.loads((path / "metrics.json").read_text())
        final = read_jsonl(path / "final_samples.jsonl")
        texts = [r["response"] for r in final]
        runs.append({**meta, **metrics, "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2)})
        history = pd.read_csv(path / "eval_history.csv").assign(**meta)
        history["d"] = np.sqrt(history["kl"].clip(lower=0))
        history["gold_gain"] = history["gold"] - history["gold"].iloc[0]
        histories.append(history)
    if not runs:
        raise UserError(f"{ppo_dir}: no PPO runs to report (run the ppo stages first)")
    return pd.DataFrame(runs), pd.concat(histories, ignore_index=True)


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


def overoptimisation(runs: pd.DataFrame, hist: pd.DataFrame, bon: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    rl_points = hist[(hist["beta"] == 0) & (hist["objective"] == "single") & ~hist["adaptive"]]
    rl_fit = fit_gao(rl_points["d"], rl_points["gold_gain"], "rl")
    single = bon[bon["objective"] == "single"].copy()
    single["d"] = np.sqrt(single["kl_exact"])
    single["gold_gain"] = single["gold"] - single["gold"].iloc[0]
    bon_fit = fit_gao(single["d"], single["gold_gain"], "bon")

    def draw(axes):
        ax = axes[0]
        sns.lineplot(data=hist, x="d", y="gold", hue="setting", units="run", estimator=None, ax=ax, lw=1.2)
        grid = np.linspace(0, rl_points["d"].max(), 200)
        base = rl_points.groupby("run")["gold"].first().mean()
        ax.plot(grid, base + gao_rl(grid, rl_fit["alpha"], rl_fit["beta"]), "k--", lw=2,
                label=f"RL fit (β=0): α={rl_fit['alpha']:.3f}, β={rl_fit['beta']:.3f}, R²={rl_fit['r2']:.2f}")
        ax.set(xlabel="d = √KL(π‖π_SFT)", ylabel="gold score", title="PPO: gold vs distance from SFT")
        ax.legend(fontsize=7)
        ax = axes[1]
        sns.lineplot(data=hist, x="d", y="proxy", hue="setting", units="run", estimator=None, ax=ax, lw=1.2,
                     legend=False)
        ax.set(xlabel="d = √KL(π‖π_SFT)", ylabel="proxy score (training objective)",
               title="PPO: proxy vs distance from SFT")
        ax = axes[2]
        ax.plot(single["d"], single["gold"], "o-", label="gold (best-of-n by proxy)")
        ax.plot(single["d"], single["proxy"], "s-", label="proxy of the pick")
        grid = np.linspace(0, single["d"].max(), 200)
        ax.plot(grid, single["gold"].iloc[0] + gao_bon(grid, bon_fit["alpha"], bon_fit["beta"]), "k--",
                label=f"BoN fit: α={bon_fit['alpha']:.3f}, β={bon_fit['beta']:.3f}, R²={bon_fit['r2']:.2f}")
        ax.set(xlabel="d = √KL_bon (exact, empirical)", ylabel="score", title="Best-of-n on the SFT policy")
        ax.legend(fontsize=7)

    return figure(fig_dir / "overoptimisation.png", draw, ncols=3, width=18), rl_fit, bon_fit


def ensembles(hist: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    zero = hist[(hist["beta"] == 0) & ~hist["adaptive"]].copy()
    zero["objective"] = zero["objective"].map(OBJECTIVE_NAMES)

    def draw(axes):
        sns.lineplot(data=zero, x="kl", y="gold", hue="objective", units="run", estimator=None, ax=axes[0])
        axes[0].set(xlabel="KL(π‖π_SFT) (nats)", ylabel="gold score", title="β = 0: gold vs KL by reward objective")
        sns.lineplot(data=zero, x="step", y="disagreement", hue="objective", units="run", estimator=None, ax=axes[1])
        axes[1].set(xlabel="PPO iteration", ylabel="ensemble std (normalised reward)",
                    title="Ensemble disagreement during training")

    return figure(fig_dir / "ensembles.png", draw)


def beta_ablation(runs: pd.DataFrame, hist: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"]]
    long = fixed.melt(id_vars=["beta", "run"], value_vars=["gold_final", "proxy_final", "kl_final", "distinct_2"])
    trade = hist[(hist["objective"] == "single") & ~hist["adaptive"]].copy()
    trade["combined"] = trade["proxy"] - trade["beta"] * trade["kl"]

    def draw(axes):
        for name, ax in zip(["gold_final", "kl_final", "distinct_2"], axes[:3]):
            sub = long[long["variable"] == name]
            sns.pointplot(data=sub, x="beta", y="value", ax=ax, errorbar="sd", capsize=0.1)
            if name == "gold_final":
                sns.pointplot(data=long[long["variable"] == "proxy_final"], x="beta", y="value", ax=ax,
                              color="tab:orange", errorbar="sd", capsize=0.1)
                ax.set_title("final gold (blue) and proxy (orange)")
            else:
                ax.set_title(f"final {name.replace('_final', '').replace('_', '-')}")
            ax.set(xlabel="β", ylabel="")
        sns.lineplot(data=trade, x="kl", y="proxy", hue="beta", units="run", estimator=None, ax=axes[3],
                     palette="viridis")
        axes[3].set(xlabel="KL (nats)", ylabel="proxy reward", title="reward–KL trade-off")

    def draw_steps(axes):
        for column, ax, label in zip(("proxy", "kl", "combined"), axes, ("reward (proxy)", "KL (nats)", "reward − β·KL")):
            sns.lineplot(data=trade, x="step", y=column, hue="beta", units="run", estimator=None, ax=ax,
                         palette="viridis", legend=column == "proxy")
            ax.set(xlabel="PPO iteration", ylabel=label, title=f"{label} over training")
        axes[1].set_yscale("symlog")
        axes[1].set_ylim(bottom=0)

    figure(fig_dir / "tradeoff.png", draw_steps, ncols=3, width=17)
    return figure(fig_dir / "beta_ablation.png", draw, ncols=4, width=18), fixed, trade


def rm_quality(reward_metrics: dict, calibration: pd.DataFrame, hist: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    scaling = pd.DataFrame([{"pairs": int(k), "accuracy": v} for k, v in reward_metrics.get("scaling", {}).items()
                            if v is not None]).sort_values("pairs")  # fmt: skip

    def draw(axes):
        axes[0].plot(scaling["pairs"], scaling["accuracy"], "o-")
        axes[0].set(xscale="log", xlabel="preference pairs", ylabel="held-out accuracy (gold labels)",
                    title="Reward model: accuracy vs data")
        axes[0].set_xticks(scaling["pairs"], [str(n) for n in scaling["pairs"]], minor=False)
        axes[0].minorticks_off()
        axes[1].plot([0.5, 1], [0.5, 1], "k:")
        axes[1].scatter(calibration["confidence"], calibration["accuracy"], s=10 + calibration["count"] / 3)
        axes[1].set(xlabel="predicted P(chosen ≻ rejected)", ylabel="observed frequency",
                    title=f"Ensemble calibration (ECE {reward_metrics['ensemble']['rm/ece']:.3f})")
        sns.lineplot(data=hist, x="kl", y="proxy_gold_spearman", hue="setting", units="run", estimator=None,
                     ax=axes[2], lw=1)
        axes[2].set(xlabel="KL (nats)", ylabel="Spearman(proxy, gold)", title="Proxy–gold agreement on policy samples")
        axes[2].legend(fontsize=6)

    return figure(fig_dir / "reward_models.png", draw, ncols=3, width=17), scaling


def sweep_figure(trials: pd.DataFrame, fig_dir: Path):
    import seaborn as sns

    value = "value" if "value" in trials else "values_0"

    def draw(axes):
        sns.scatterplot(data=trials, x="params_beta", y="params_clip_eps", hue=value, style="state", s=90,
                        palette="viridis", ax=axes[0])
        axes[0].set(xscale="log", xlabel="β", ylabel="clip ε", title="Optuna trials (colour: gold)")
        if "values_1" in trials:  # multi-objective: the Pareto front
            sns.scatterplot(data=trials, x="values_1", y="values_0", hue="pareto", ax=axes[1])
            axes[1].set(xlabel="final KL", ylabel="final gold", title="Pareto front (gold ↑, KL ↓)")
        else:
            sns.scatterplot(data=trials, x="params_beta", y=value, hue="state", ax=axes[1], s=60)
            axes[1].set(xscale="log", xlabel="β", ylabel="gold (final; last reported if pruned)",
                        title="Trial outcome vs β")

    return figure(fig_dir / "sweep.png", draw)


# ------------------------------------------------------------------------------------------ tables
def training_table(hist: pd.DataFrame, run: str) -> pd.DataFrame:
    h = hist[hist["run"] == run]
    return pd.DataFrame({"Step": h["step"], "Reward": h["proxy"], "KL": h["kl"],
                         "Combined": h["proxy"] - h["beta"] * h["kl"], "Gold": h["gold"]}).round(3)  # fmt: skip


def hacking_table(ppo_dir: Path, hacking_run: str, best_run: str, n: int) -> pd.DataFrame:
    rows = read_jsonl(ppo_dir / hacking_run / "samples.jsonl")
    best = read_jsonl(ppo_dir / best_run / "samples.jsonl")
    last, best_last = max(r["step"] for r in rows), max(r["step"] for r in best)
    out = []
    for label, source, step in (("SFT (step 0)", rows, 0), (f"{hacking_run}, step {last}", rows, last),
                                (f"{best_run} (best β), step {best_last}", best, best_last)):  # fmt: skip
        for r in [r for r in source if r["step"] == step][:n]:
            out.append({"policy": label, "prompt": r["prompt"], "response": r["response"],
                        "proxy": r["proxy"], "gold": r["gold"]})  # fmt: skip
    return pd.DataFrame(out)


def importances(sweep_dir: Path, storage: str | None, study_name: str) -> pd.DataFrame:
    import optuna

    url = storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
        values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, KeyError) as err:  # too few complete trials, multi-objective...
        return pd.DataFrame([{"parameter": "n/a", "importance": f"not computed: {err}"}])
    return pd.DataFrame([{"parameter": k, "importance": round(v, 3)} for k, v in values.items()])


# ------------------------------------------------------------------------------------------ page
def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="t")


def fmt_fit(fit: dict) -> str:
    return (f"α = {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, β = {fit['beta']:.3f} ± {fit['beta_se']:.3f}, "
            f"R² = {fit['r2']:.3f} ({fit['points']} points); predicted peak at KL = {fit['peak_kl']:.2f} nats "
            f"(gain {fit['peak_gain']:+.3f})")  # fmt: skip


def run(cfg: Config) -> dict:
    ppo_dir, r = Path(cfg.paths.ppo), cfg.report
    runs, hist = load_runs(ppo_dir)
    bon = pd.read_csv(Path(cfg.paths.best_of_n) / "bon.csv")
    reward_metrics = json.loads((Path(cfg.paths.reward) / "metrics.json").read_text())
    calibration = pd.read_csv(Path(cfg.paths.reward) / "calibration.csv")
    sweep_dir = Path(cfg.paths.sweep)
    trials = pd.read_csv(sweep_dir / "trials.csv")
    sweep_metrics = json.loads((sweep_dir / "metrics.json").read_text())
    for name in (r.default_run, r.hacking_run):
        if name not in set(runs["run"]):
            raise UserError(f"report.default_run/hacking_run: no PPO run named {name!r}; runs: {', '.join(runs['run'])}")

    with replacing_dir(cfg.paths.report, merge=True) as out:  # reports/README.md stays
        fig_dir = out / "figures"
        overopt_png, rl_fit, bon_fit = overoptimisation(runs, hist, bon, fig_dir)
        ensembles_png = ensembles(hist, fig_dir)
        beta_png, fixed, trade = beta_ablation(runs, hist, fig_dir)
        rm_png, scaling = rm_quality(reward_metrics, calibration, hist, fig_dir)
        sweep_png = sweep_figure(trials, fig_dir)

        zero = runs[(runs["beta"] == 0) & ~runs["adaptive"]].copy()
        zero["gold_drop"] = zero["gold_peak"] - zero["gold_final"]
        drops = zero.groupby("objective")[["gold_peak", "gold_final", "gold_drop", "kl_final"]].mean()
        best_run = runs.loc[runs["gold_final"].idxmax(), "run"]
        metrics = {
            **{f"overopt.rl.{k}": v for k, v in rl_fit.items()},
            **{f"overopt.bon.{k}": v for k, v in bon_fit.items()},
            **{f"ensemble.{obj}.gold_drop": float(drops.loc[obj, "gold_drop"]) for obj in drops.index},
            **{f"ensemble.{obj}.gold_final": float(drops.loc[obj, "gold_final"]) for obj in drops.index},
            "sweep.best.beta": sweep_metrics.get("sweep.best.beta"),
            "sweep.best.clip_eps": sweep_metrics.get("sweep.best.clip_eps"),
            "sweep.n_trials": sweep_metrics["sweep.n_trials"],
            "best_run": best_run,
            "best_run.gold_final": float(runs["gold_final"].max()),
        }
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

        plots = out / "plots"
        plots.mkdir()
        hist[["run", "setting", "step", "kl", "d", "gold", "proxy", "disagreement"]].to_csv(plots / "ppo_curves.csv", index=False)
        bon.to_csv(plots / "best_of_n.csv", index=False)
        fixed[["run", "beta", "gold_final", "proxy_final", "kl_final", "distinct_2"]].to_csv(plots / "beta_ablation.csv", index=False)
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")

        run_table = runs[["run", "setting", "seed", "gold_initial", "gold_peak", "gold_peak_kl", "gold_final",
                          "proxy_final", "kl_final", "distinct_1", "distinct_2"]].round(3)  # fmt: skip
        sections = [
            f"<h1>{html.escape(r.title)}</h1>",
            "<p>Every number below is read from the runs' files written by the pipeline "
            "(<code>runs/</code>, <code>models/reward</code>); gold is the task's programmatic reward, proxy the "
            "learned reward model(s) used for training, normalised to mean 0 / std 1 on SFT samples.</p>",
            "<h2>1. Over-optimisation (Gao et al. 2022)</h2>", embed(overopt_png),
            f"<p><b>RL</b> (β = 0, single RM, all seeds pooled; gold gain vs d): {fmt_fit(rl_fit)}.<br>"
            f"<b>Best-of-n</b> (SFT policy, unbiased estimator over {cfg.best_of_n.samples_per_prompt} samples "
            f"per prompt; d from the exact KL of best-of-n over the empirical sample distribution, which "
            f"differs from the bound log n − (n−1)/n only through ties): {fmt_fit(bon_fit)}.</p>",
            table(run_table),
            "<h2>2. Reward-model ensembles (Coste et al. 2023)</h2>", embed(ensembles_png),
            "<p>Gold drop = peak gold − final gold of the β = 0 runs, by training objective "
            f"(uncertainty-weighted λ = {cfg.ppo.uwo_lambda}, population variance across "
            f"{reward_metrics['ensemble']['rm/members']} members).</p>",
            table(drops.reset_index().assign(objective=lambda f: f["objective"].map(OBJECTIVE_NAMES))),
            "<h2>3. β ablation and the reward–KL trade-off</h2>", embed(beta_png), embed(fig_dir / "tradeoff.png"),
            table(fixed[["run", "beta", "gold_final", "proxy_final", "kl_final", "distinct_1", "distinct_2"]]),
            f"<h2>4. Training table ({html.escape(r.default_run)})</h2>",
            "<p>Reward = proxy score, KL in nats, Combined = Reward − β·KL (the KL-regularised objective).</p>",
            table(training_table(hist, r.default_run)),
            "<h2>5. Reward hacking in text</h2>",
            table(hacking_table(ppo_dir, r.hacking_run, best_run, r.samples)),
            "<h2>6. Reward-model quality</h2>", embed(rm_png),
            table(scaling),
            table(pd.DataFrame([{"model": k, **v} for k, v in reward_metrics.items() if k.startswith(("member", "ensemble"))])),
            "<h2>7. Optuna study (β, clip ε)</h2>", embed(sweep_png),
            f"<p>Best: β = {metrics['sweep.best.beta']}, ε = {metrics['sweep.best.clip_eps']} "
            f"({sweep_metrics['sweep.n_trials']} trials, {sweep_metrics['sweep.n_pruned']} pruned).</p>",
            table(importances(sweep_dir, cfg.sweep.storage, cfg.sweep.study_name)),
            table(trials.drop(columns=[c for c in trials if c.startswith(("datetime", "duration", "system"))])),
        ]
        style = ("body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}"
                 ".t{border-collapse:collapse;font-size:12px;margin:0.5em 0}.t td,.t th{padding:2px 8px;"
                 "border-bottom:1px solid #ddd}")  # fmt: skip
        page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(r.title)}</title>" \
               f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"  # fmt: skip
        (out / "report.html").write_text(page)
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
