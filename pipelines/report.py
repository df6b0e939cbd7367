"""Report stage: the over-optimisation, ensemble, β-ablation, reward-model and sweep analyses.

Reads the runs' files (never the MLflow UI) and writes, under ``paths.report``: ``report.html``
(self-contained: figures embedded), ``figures/*.png``, ``metrics.json`` (headline numbers) and
``plots/*.csv`` (curves declared as DVC plots).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab import config as config_lib
from rlhf_lab.analysis.comparisons import (
    comparison_table,
    ensemble_comparison,
    fmt_interval,
    member_agreement,
    seed_band,
)
from rlhf_lab.analysis.findings import (
    P_FLOOR,
    add_endpoints,
    ensemble_table,
    family_metrics,
    fmt_p,
    history_to_budget,
    overoptimisation_counts,
    overoptimisation_fits,
    primary_family,
    replication,
    zero_beta,
)
from rlhf_lab.analysis.frontier import frontier, frontier_runs
from rlhf_lab.analysis.runs import load_runs
from rlhf_lab.analysis.labels import setting_labels
from rlhf_lab.analysis.proportions import wilson_interval
from rlhf_lab.analysis.remedies import (
    iterated_form,
    remedies_family,
    remedies_metrics,
    remedies_table,
    remedy_arms,
    remedy_settings,
    warm_best_of_n,
    warm_best_of_n_metrics,
)
from rlhf_lab.analysis.stats import Difference, t_interval
from rlhf_lab.config import Config, UserError
from rlhf_lab.data.files import read_jsonl, write_json
from rlhf_lab.report.figures import (
    beta_ablation,
    draw_bands,
    draw_d_bands,
    ensembles,
    figure,
    frontier_figure,
    overoptimisation,
    rm_quality,
    sweep_figure,
)
from rlhf_lab.report.page import (
    METHODS,
    describe_conditions,
    describe_gold,
    embed,
    findings_section,
    synthesis,
    fits_text,
    hacking_table,
    shown_note,
    style_page,
    sweep_section,
    table,
    training_table,
)
from rlhf_lab.rewards.reward_model import score_samples, warm_path
from rlhf_lab.runtime.stage import replacing_dir, stage_main


def design_metrics(runs: pd.DataFrame, rl: dict, counts: pd.DataFrame, family: pd.DataFrame, first: str) -> dict:
    """metrics.json keys of the declared design: endpoints by objective, the RL fits' checks, the primary family."""
    metrics = family_metrics(family)
    for (condition, objective), group in zero_beta(runs).groupby(["condition", "objective"], sort=False):
        for column in ["gold_peak", "gold_peak_kl", "gold_at_budget", *[c for c in runs if c.startswith("gold_at_d")]]:
            metrics.update({f"ensemble.{condition}.{objective}.{column}.{k}": v
                            for k, v in t_interval(group[column]).to_dict().items()})  # fmt: skip
    for condition, fit in rl.items():
        row = counts[(counts["condition"] == condition) & (counts["objective"] == "single") & (counts["beta"] == 0)]
        over = wilson_interval(int(row["seeds_overoptimised"].sum()), int(row["seeds"].sum()))
        keys = {"seeds_overoptimised": over.k, "seeds": over.n, "seeds_overoptimised.ci_low": over.ci_low,
                "seeds_overoptimised.ci_high": over.ci_high, "peak_quoted": fit["quoted_peak_kl"] is not None,
                "seeds_peak_quoted": sum(s["quoted_peak_kl"] is not None for s in fit["per_seed"]),
                "per_seed_peak_in_range": all(s["peak_in_range"] for s in fit["per_seed"]),
                "r2_per_seed_min": min(s["r2"] for s in fit["per_seed"]),
                "r2_per_seed_median": float(np.median([s["r2"] for s in fit["per_seed"]])),
                "r2_mean_curve": fit["mean_curve"]["r2"] if fit["mean_curve"] else None, "r2": fit["r2"]}  # fmt: skip
        metrics.update({f"overopt.rl.{condition}.{k}": v for k, v in keys.items()})
        if condition == first:
            metrics.update({f"overopt.rl.{k}": v for k, v in keys.items() if k != "r2"})
    return metrics


def proxy_only_report(cfg: Config, runs: pd.DataFrame, hist: pd.DataFrame, reward_metrics: dict) -> dict:
    """Without a gold reward: proxy and KL over training per setting, final levels over seeds and
    the reward models' held-out accuracy; the page says that gold is absent."""
    r = cfg.report
    levels = pd.DataFrame([{"setting": setting, "n": len(group),
                            **{f"{c} [95 % CI]": fmt_interval(t_interval(group[c])) for c in ("proxy_final", "kl_final")},
                            "distinct_2": round(float(group["distinct_2"].mean()), 3)}
                           for setting, group in runs.groupby("setting")])  # fmt: skip
    rm_table = pd.DataFrame([{"condition": c, "model": k, **v} for c, m in reward_metrics.items()
                             for k, v in m.items() if k.startswith(("member", "ensemble", "warm"))])  # fmt: skip
    metrics = {f"setting.{s}.{c}.mean": float(g[c].mean()) for s, g in runs.groupby("setting") for c in ("proxy_final", "kl_final")}
    metrics["gold"] = "none"
    for c, m in reward_metrics.items():
        metrics[f"rm.{c}.ensemble.accuracy"] = m["ensemble"]["rm/accuracy"]
    with replacing_dir(cfg.paths.report, merge=True) as out:
        fig_dir = out / "figures"

        shown = hist.assign(setting=hist["setting"].map(setting_labels(runs, next(iter(cfg.reward_conditions)))))

        def draw(axes):
            draw_bands(axes[0], seed_band(shown, "proxy", x="step"), "step", "proxy")
            axes[0].set(xlabel="PPO iteration", ylabel="proxy reward", title="proxy over training (mean, 95 % band)")
            draw_d_bands(axes[1], shown, "proxy")
            axes[1].set(xlabel="d = √KL(π‖π_SFT)", ylabel="proxy reward", title="proxy vs distance (mean on d)")
            axes[0].legend(fontsize=6)

        png = figure(fig_dir / "proxy.png", draw, panels=2)
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
    runs, hist = load_runs(ppo_dir, set(cfg.ppo_runs))
    conditions = list(cfg.reward_conditions)
    first = conditions[0]
    reward_metrics = {c: json.loads((Path(cfg.for_condition(c).paths.reward) / "metrics.json").read_text())
                      for c in conditions}  # fmt: skip
    if "gold" not in hist:
        return proxy_only_report(cfg, runs, hist, reward_metrics)
    bon = pd.read_csv(Path(cfg.paths.best_of_n) / "bon.csv")
    bon_prompts_csv = Path(cfg.paths.best_of_n) / "bon_prompts.csv"
    bon_prompts = pd.read_csv(bon_prompts_csv) if bon_prompts_csv.is_file() else None
    warm_bon = warm_best_of_n(bon_prompts, r.alpha)  # every condition with a weight average, remedy-only ones too
    calibration = pd.read_csv(Path(cfg.for_condition(first).paths.reward) / "calibration.csv")
    sweep_dir = Path(cfg.paths.sweep)
    trials_csv = sweep_dir / "trials.csv"
    # The sweep is optional: without it the report says so where its section would be.
    trials = pd.read_csv(trials_csv) if trials_csv.is_file() else None
    sweep_metrics = json.loads((sweep_dir / "metrics.json").read_text()) if trials is not None else {}
    default_run, hacking_run = (shown_setting(runs, key, name) for key, name in
                                (("default_run", r.default_run), ("hacking_run", r.hacking_run)))  # fmt: skip

    every_run = add_endpoints(runs, hist, r.d_grid, r.overopt_drop)
    # Remedies with settings of their own are measured in section 10 only, against their baselines.
    remedy_runs = every_run[every_run["algorithm"] == "ppo"]
    remedy_hist = hist[hist["algorithm"] == "ppo"]
    every_run = every_run[~every_run["setting"].isin(remedy_settings(r.remedies))]
    # Sections 1-9 read each curve up to its KL budget (the remedies' rules above read every evaluation).
    every_hist = hist = history_to_budget(hist[hist["run"].isin(every_run["run"])], every_run)
    # Sections 1-8 are PPO's study; the other optimisers meet it on the frontier (section 9).
    runs = every_run[every_run["algorithm"] == "ppo"].reset_index(drop=True)
    hist = hist[hist["algorithm"] == "ppo"]
    if bon_prompts is not None:  # a condition only remedies use is not the study's
        bon_prompts = bon_prompts[bon_prompts["condition"].isin(set(runs["condition"]))]
    bon = bon[bon["condition"].isin(set(runs["condition"]))] if "condition" in bon else bon
    if runs.empty:
        raise UserError(f"{ppo_dir}: no PPO runs to report (ppo_runs needs at least one setting with algorithm ppo)")
    family = primary_family(runs, bon_prompts, first, r.alpha)
    replicated, replication_metrics = (replication(runs, bon_prompts, first, r.alpha, r.seed_sets) if r.seed_sets
                                       else (pd.DataFrame(), {}))  # fmt: skip
    counts = overoptimisation_counts(runs)

    labels = setting_labels(every_run, first)  # what every legend and table calls a setting
    shown = hist.assign(setting=hist["setting"].map(labels))

    with replacing_dir(cfg.paths.report, merge=True) as out:  # reports/README.md stays
        fig_dir = out / "figures"
        rl, bon_fit = overoptimisation_fits(hist, bon, first)
        overopt_png = overoptimisation(shown, bon, first, rl, bon_fit, fig_dir)
        ensembles_png = ensembles(shown, bon, fig_dir)
        beta_png, beta_summary, trade = beta_ablation(runs, hist, first, fig_dir)
        rm_png, scaling = rm_quality(reward_metrics, calibration, shown, fig_dir)
        sweep_png = sweep_figure(trials, fig_dir) if trials is not None else None
        comparison = ensemble_comparison(runs, hist, r.matched_kl)
        agreement = member_agreement(runs)
        setting_gold = runs.groupby("setting")["gold_at_budget"].mean()
        best_setting = setting_gold.idxmax()
        metrics = headline_metrics(rl.get(first, {}), bon_fit, comparison, beta_summary, sweep_metrics, first)
        metrics.update(design_metrics(runs, rl, counts, family, first))
        metrics.update(replication_metrics)
        metrics.update({"best_run": best_setting, "best_run.gold_at_budget": float(setting_gold.max())})
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

        plots = out / "plots"
        plots.mkdir()
        hist[["run", "setting", "seed", "step", "kl", "d", "gold", "proxy", "disagreement"]].to_csv(plots / "ppo_curves.csv", index=False)
        bon.to_csv(plots / "best_of_n.csv", index=False)
        fixed = runs[(runs["objective"] == "single") & ~runs["adaptive"] & (runs["condition"] == first)]
        fixed[["run", "seed", "beta", "gold_at_budget", "kl_at_budget", "gold_final", "proxy_final", "kl_final",
               "distinct_2"]].to_csv(plots / "beta_ablation.csv", index=False)  # fmt: skip
        frontier_table, frontier_metrics = frontier(every_run, every_hist, first, r.alpha)
        metrics.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in frontier_metrics.items()})  # fmt: skip
        kinds = {c: {"sft": "fine-tune seed", "pretrain-seed": "pre-train seed"}[cfg.for_condition(c).reward.member_init]
                 for c in conditions}  # fmt: skip
        warm_scores = warm_scores_of_final_samples(cfg, remedy_runs)
        probe = min(cfg.ppo.gold_probe, cfg.data.eval_prompts)
        remedies = remedies_family(remedy_arms(remedy_runs, remedy_hist, r.remedies, r.early_stop_patience,
                                               r.gold_probe_every, probe, r.early_stop or ("proxy", "gold")), r.alpha,
                                   r.d_grid)  # fmt: skip
        metrics.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                        for k, v in {**remedies_metrics(remedies), **warm_best_of_n_metrics(warm_bon)}.items()})  # fmt: skip
        write_json(out / "metrics.json", metrics)
        config_lib.save(cfg, out / "config.yaml")

        run_table = every_run_table(runs, labels)
        beta_table = pd.DataFrame({"β": beta_summary["beta"], "n": [iv.n for iv in beta_summary["gold_at_budget"]],
                                   "reached the budget": [f"{int(g['budget_reached'].sum())} of {len(g)}"
                                                          for _, g in fixed.groupby("beta")],
                                   **{f"{name} [95 % CI]": beta_summary[c].map(fmt_interval) for c, name in
                                      (("gold_at_budget", "gold at the budget"), ("kl_at_budget", "KL where read"),
                                       ("gold_peak", "gold peak"), ("proxy_at_budget", "proxy at the budget"),
                                       ("kl_final", "KL at the last evaluation"), ("distinct_2", "distinct-2"))}})  # fmt: skip
        rm_table = pd.DataFrame([{"condition": c, "model": k, **v} for c, m in reward_metrics.items()
                                 for k, v in m.items() if k.startswith(("member", "ensemble", "warm"))])  # fmt: skip
        sections = [
            f"<h1>{html.escape(r.title)}</h1>",
            "<p>Every number below is read from the runs' files written by the pipeline "
            f"(<code>runs/</code>, <code>models/reward</code>); {describe_gold(cfg)}, proxy the "
            "learned reward model(s) used for training, normalised to mean 0 / std 1 on SFT samples.</p>",
            synthesis(runs, rl, counts, family, cfg),
            findings_section(family, bon),
            *(["<p><b>Replication</b>: each primary comparison over seeds decided from each disjoint seed set "
               "alone (Holm within the set); a verdict that differs between the sets is not a finding.</p>",
               table(replicated)] if not replicated.empty else []),
            METHODS,
            "<h2>1. Over-optimisation (Gao et al. 2022)</h2>", embed(overopt_png), fits_text(rl, bon_fit, cfg),
            "<p>Seeds that over-optimised (gold fell at least "
            f"{r.overopt_drop:g} from its peak while the proxy at the budget ended above its value there), per setting, "
            "with Wilson's 95 % interval for the rate:</p>",
            table(pd.DataFrame({"setting": counts["setting"].map(labels),
                                "over-optimised seeds [95 % Wilson CI]": counts["rate [95 % Wilson CI]"]})),
            "<h2>2. Reward-model ensembles (Coste et al. 2023)</h2>", embed(ensembles_png),
            f"<p>β = 0 runs by training objective and reward condition ({describe_conditions(cfg)}). "
            "Gold drop = peak gold − gold at the KL budget of a run; gold at matched KL = the gold where the run first "
            "reaches the matched KL (interpolated between evaluations; the median KL of the condition's gold "
            f"peaks unless <code>report.matched_kl</code> is set). Uncertainty-weighted λ = {cfg.ppo.uwo_lambda}.</p>",
            "<p>The primary endpoint is the gold peak, tested against the single RM of the same condition within the "
            "primary family (Holm); gold at each distance, gold drop and KL at the peak are secondary endpoints, shown "
            "as estimates with 95 % intervals and no verdict; a distance some seeds never reached is read over those "
            "that did (the cell says how many). Detectable: the difference found with 80 % power at Holm's strictest "
            "level from the observed seed spread; seeds needed: per side, for a difference of the observed size.</p>",
            table(ensemble_table(runs, family, r.d_grid)) if not zero_beta(runs).empty
            else "<p>No β = 0 runs: the ensemble comparison is skipped.</p>",
            "<p>Earlier endpoints (gold drop, gold at a matched KL; Welch, uncorrected; kept for comparison with "
            "earlier reports, no verdict):</p>",
            table(comparison_table(comparison)) if not comparison.empty else "",
            "<p>Why an ensemble can fail to help: if its members agree on the policy's samples, every aggregate "
            "(mean, worst case, variance penalty) rewards the same text. On the β = 0 policies' final samples:</p>",
            table(agreement) if not agreement.empty else "",
            "<h2>3. β ablation and the reward–KL trade-off</h2>", embed(beta_png), embed(fig_dir / "tradeoff.png"),
            table(beta_table),
            f"<h2>4. Training table ({html.escape(labels.get(default_run, default_run))}, mean over seeds)</h2>", *shown_note(r.default_run, default_run, "default_run"),
            "<p>Reward = proxy score, KL in nats, Combined = Reward − β·KL (the KL-regularised objective).</p>",
            table(training_table(hist, default_run)),
            "<h2>5. Reward hacking in text</h2>", *shown_note(r.hacking_run, hacking_run, "hacking_run"),
            table(hacking_table(runs, hacking_run, best_setting, r.samples, labels)),
            "<h2>6. Reward-model quality</h2>", embed(rm_png),
            table(scaling), table(rm_table),
            "<h2>7. Optuna study (β, clip ε)</h2>", sweep_section(cfg, trials, sweep_metrics, sweep_png, metrics, runs, first),
            "<h2>8. Every run</h2>", table(run_table),
            "<h2>9. Every optimiser on one gold: the frontier</h2>",
            frontier_section(frontier_table, every_run, every_hist.assign(setting=every_hist["setting"].map(labels)), first,
                             fig_dir),
            "<h2>10. Remedies against over-optimisation</h2>", remedies_section(remedies, cfg),
            *warm_best_of_n_section(warm_bon),
            "<p>Does a more diverse ensemble break the shared hack? Members' agreement on the β = 0 policies' final "
            "samples, by kind of ensemble: members that differ in fine-tuning seed (head init, data order), in "
            "pre-training seed (<code>reward.member_init: pretrain-seed</code>), and WARM (one model, the weights of "
            "fits from one initialisation averaged; a WARM run's members' columns are its condition's ensemble). "
            "The WARM columns score the same samples "
            "with the condition's weight average (<code>reward.warm</code>): does averaging the members' weights see "
            "the hack they share?</p>",
            table(member_agreement(remedy_runs[[not (Path(p) / "rounds.csv").is_file() for p in remedy_runs["path"]]],
                                   kinds, warm_scores)),  # iterated runs' members are rounds, not an ensemble kind  # fmt: skip
            *rounds_section(remedy_runs, remedy_hist, rl),
        ]
        (out / "report.html").write_text(style_page(r.title, sections))
    return metrics


def every_run_table(runs: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """Section 8: each run's endpoints, gold at the budget beside the KL where it was read and where the
    run stopped, so a run the cap stopped short of the budget reads as such."""
    frame = runs.assign(setting=runs["setting"].map(labels),
                        ended=np.where(runs["budget_reached"], "at the KL budget", "at the iteration cap"))  # fmt: skip
    columns = {"setting": "setting", "seed": "seed", "ended": "read", "gold_initial": "gold (SFT)",
               "gold_at_budget": "gold at the budget", "kl_at_budget": "KL where read", "gold_peak": "gold peak",
               "gold_peak_kl": "KL at peak", "proxy_at_budget": "proxy at the budget", "gold_final": "gold, last evaluation",
               "kl_final": "KL, last evaluation", "distinct_1": "distinct-1", "distinct_2": "distinct-2"}  # fmt: skip
    return frame[list(columns)].rename(columns=columns).round(3)


def warm_scores_of_final_samples(cfg: Config, runs: pd.DataFrame) -> dict[str, np.ndarray]:
    """The weight average's (WARM's) scores of each β = 0 run's final samples, where the run's
    condition saved one and the run did not train on it (those record it as their first score): the
    agreement table's WARM columns for the default grid, at the cost of scoring, not of a run."""
    scores = {}
    zero = zero_beta(runs)
    zero = zero[zero["objective"] != "warm"]
    for condition, group in zero.groupby("condition", sort=False):
        condition_cfg = cfg.for_condition(condition)
        if not warm_path(condition_cfg).is_dir():
            continue
        samples = {path: read_jsonl(Path(path) / "final_samples.jsonl") for path in group["path"]}
        every = score_samples(warm_path(condition_cfg), [row for rows in samples.values() for row in rows],
                              condition_cfg.reward.max_length)  # one load and pass per condition  # fmt: skip
        ends = np.cumsum([len(rows) for rows in samples.values()])
        scores.update(zip(samples, np.split(every, ends[:-1])))
    return scores


def frontier_section(table_frame: pd.DataFrame, runs: pd.DataFrame, hist: pd.DataFrame, first: str,
                     fig_dir: Path) -> str:  # fmt: skip
    """Section 9: gold vs d per optimiser (each at its least-regularised setting), the RL fit of each,
    gold peak and KL at the peak, and each against PPO; or why there is nothing to compare."""
    algorithms = sorted(set(runs["algorithm"]))
    if algorithms == ["ppo"]:
        return ("<p>Only PPO runs: the frontier needs settings of other optimisers (<code>algorithm</code>: rloo, "
                "grpo, dpo, ipo in <code>ppo_runs</code>; <code>examples/frontier/params.yaml</code> has a grid).</p>")  # fmt: skip
    chosen = frontier_runs(runs, first)
    png = frontier_figure(hist[hist["run"].isin(chosen["run"])], fig_dir)
    return "".join([
        embed(png),
        "<p>Each optimiser at its least-regularised setting (smallest β; single RM, the first condition), on the "
        "same gold and the same KL budget. DPO and IPO learn offline from the condition's preference pairs and "
        "are measured on their own samples by the same evaluations. Gold peak is a mean [95 % t CI] over seeds, "
        "KL at the peak a bootstrap interval; the RL form d(α − β log d) is fitted to each optimiser's seeds "
        "(bootstrap CI over seeds). Against PPO: Welch on gold peak, Holm over the optimisers compared (a family "
        "of its own, outside the primary one).</p>",
        table(table_frame),
    ])  # fmt: skip


def rounds_section(runs: pd.DataFrame, hist: pd.DataFrame, rl: dict) -> list[str]:
    """Iterated RLHF, per setting and round: mean over seeds of the round's final gold, proxy and KL and
    of its reward model's accuracy on held-out SFT pairs and on pairs of the policy it trained; then
    Gao et al.'s iterated form against the rounds."""
    frames = [pd.read_csv(Path(path) / "rounds.csv").assign(setting=setting, seed=seed)
              for path, setting, seed in zip(runs["path"], runs["setting"], runs["seed"])
              if (Path(path) / "rounds.csv").is_file()]  # fmt: skip
    if not frames:
        return []
    rounds = pd.concat(frames).groupby(["setting", "round"]).agg(
        seeds=("seed", "nunique"), pairs=("pairs", "mean"), iterations=("iterations", "mean"),
        gold=("gold", "mean"), proxy=("proxy", "mean"), kl=("kl", "mean"),
        rm_accuracy_sft_pairs=("rm_accuracy_sft_pairs", "mean"),
        rm_accuracy_policy_pairs=("rm_accuracy_policy_pairs", "mean")).reset_index().round(3)  # fmt: skip
    return ["<p>Iterated RLHF, per round (mean over seeds): the round's final gold, proxy and KL, and its reward "
            "model's accuracy on held-out SFT pairs and on pairs drawn from the policy it trained (gold labels). "
            "Proxy values of different rounds come from different reward models.</p>", table(rounds),
            *iterated_form_section(iterated_form(runs, hist, rl))]


def warm_best_of_n_section(rows: pd.DataFrame) -> list[str]:
    if rows.empty:
        return []
    shown = pd.DataFrame({"condition": rows["condition"], "endpoint": rows["endpoint"], "prompts": rows["n_a"],
                          "WARM − single RM [95 % CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in
                                                         zip(rows["diff"], rows["ci_low"], rows["ci_high"])],
                          "Holm p": [fmt_p(q, at_floor=p <= P_FLOOR * (1 + 1e-9)) for p, q in zip(rows["p"], rows["p_holm"])],
                          "verdict": rows["verdict"]})  # fmt: skip
    return ["<p>WARM in best-of-n: the pick by the members' weight average against the pick by the single RM, "
            "on the same SFT samples, paired over prompts (bootstrap interval, paired permutation p), Holm over "
            "the conditions.</p>", table(shown)]


def iterated_form_section(check: pd.DataFrame) -> list[str]:
    if check.empty:
        return ["<p>Gao et al.'s iterated form is checked on settings that continue the last round's policy "
                "(<code>round_start: last</code>); there is none here.</p>"]
    return ["<p>Gao et al.'s iterated form R = d(α − β log d + β log k): k rounds each travel d/k against a "
            "fresh reward model, so iterating should lift the single-round curve by β d log k. Per round, the "
            "measured gold gain at the round's end (mean over seeds) against the form's prediction from the "
            "condition's single-round fit (β = 0 single RM) with k = the round and with k = 1; and the form "
            "refitted to the setting's own evaluations with k = each evaluation's round and with k = 1. Where "
            "k = round predicts no better than k = 1, the rounds did not buy the distance Gao et al. assume. "
            "Settings that restart from SFT each round travel anew and are outside the form's premise.</p>",
            table(check.round(3))]


def remedies_section(family: pd.DataFrame, cfg: Config) -> str:
    """Section 10: each remedy against the β = 0 single-RM baseline of its condition."""
    r = cfg.report
    if family.empty:
        return "<p>No remedy to measure: the β = 0 single-RM settings are missing.</p>"
    return "".join([
        "<p>Each remedy against the β = 0 single-RM runs of its condition. Primary endpoint: the gold of the "
        "policy the remedy leaves you with at the KL budget (gold at the budget, read as every run is; for early "
        "stopping, the gold of the evaluation it returns, or the baseline's own gold at the budget where the rule "
        "returns the run's last evaluation; a rule that returns the baseline in every seed is marked identical and "
        "left out of the family). Over seeds: paired t for early stopping (the baseline's own runs, read another way), Welch for "
        "a remedy with runs of its own; Holm over the remedies' primary family; gold peak and gold at each d of "
        "the grid (over the seeds that reach it; none for early stopping, whose curve is the baseline's) are "
        "secondary, each a family of its own, "
        "robust = the verdict holds with any one seed left out; detectable: the difference found with 80 % power at "
        "Holm's strictest level. "
        "<i>vs best β</i>: against the grid's best fixed β, an estimate with no verdict.</p>",
        "<p>Early stopping is a rule over the baseline runs' own evaluations, so applied afterwards it gives "
        "what it would have given online (the run up to its stop is the same); it stops after "
        f"{r.early_stop_patience} evaluations without improvement and returns the best evaluation's policy "
        "(a checkpoint per evaluation). <b>early_stop_proxy</b> reads no gold: the mean of the reward members "
        "held out of the training objective (members 1…K−1; the single RM trains on member 0). "
        f"<b>early_stop_gold</b> reads gold on {min(cfg.ppo.gold_probe, cfg.data.eval_prompts)} probe prompts "
        f"every {r.gold_probe_every} evaluation(s) (<code>ppo.gold_probe</code>); gold queries = probe prompts × "
        "checks. Regret = the run's own peak gold − the gold of the returned policy.</p>",
        table(remedies_table(family)),
    ])  # fmt: skip


def shown_setting(runs: pd.DataFrame, key: str, name: str) -> str:
    """``report.<key>`` where the runs have that setting; else the one that serves its purpose: for
    the hacking samples the β = 0 single-RM setting (or the one that went furthest, by final KL), for
    the training table the best by final gold."""
    settings = runs.groupby("setting", sort=False)
    if name in settings.groups:
        return name
    if key == "hacking_run":
        zero = runs[(runs["beta"] == 0) & (runs["objective"] == "single")]
        return zero["setting"].iloc[0] if not zero.empty else settings["kl_final"].mean().idxmax()
    return settings["gold_final"].mean().idxmax()


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
        for column in ("gold_at_budget", "kl_at_budget", "gold_final", "kl_final"):
            metrics.update({f"beta.{row['beta']:g}.{column}.{k}": v for k, v in row[column].to_dict().items()})
    metrics.update({
        "sweep.best.beta": sweep_metrics.get("sweep.best.beta"),
        "sweep.best.clip_eps": sweep_metrics.get("sweep.best.clip_eps"),
        "sweep.n_trials": sweep_metrics.get("sweep.n_trials", 0),
    })  # fmt: skip
    return metrics


def main() -> None:
    stage_main(run, __doc__.splitlines()[0], services=("storage",))


if __name__ == "__main__":
    main()
