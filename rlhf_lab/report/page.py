"""The report's HTML: tables, the methods text, the findings list and the page around them."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab.analysis.comparisons import MIN_BAND_SEEDS
from rlhf_lab.analysis.findings import comparison_name, family_table, finding, seed_fit_table, sweep_against_grid
from rlhf_lab.analysis.fits import MIN_FIT_R2, fit_gao
from rlhf_lab.config import Config
from rlhf_lab.data.files import read_jsonl
from rlhf_lab.rewards.gold import gold_kind


def training_table(hist: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Step | Reward | KL | Combined | Gold of one setting, each the mean over its seeds."""
    h = hist[hist["setting"] == setting].assign(combined=lambda f: f["proxy"] - f["beta"] * f["kl"])
    mean = h.groupby("step")[["proxy", "kl", "combined", "gold"]].mean().reset_index()
    return pd.DataFrame({"Step": mean["step"], "Reward": mean["proxy"], "KL": mean["kl"],
                         "Combined": mean["combined"], "Gold": mean["gold"]}).round(3)  # fmt: skip

def hacking_table(runs: pd.DataFrame, hacking: str, best: str, n: int, labels: dict[str, str] | None = None) -> pd.DataFrame:
    """Samples at step 0 and at the end of the hacking setting's first seed, and of the best setting
    (named by ``labels``, the report's one mapping of settings to names)."""
    shown = lambda setting: (labels or {}).get(setting, setting)  # noqa: E731
    first_seed = lambda setting: Path(runs[runs["setting"] == setting].sort_values("seed")["path"].iloc[0])  # noqa: E731
    rows, best_rows = (read_jsonl(first_seed(name) / "samples.jsonl") for name in (hacking, best))
    last, best_last = max(r["step"] for r in rows), max(r["step"] for r in best_rows)
    out = []
    for label, source, step in (("SFT (step 0)", rows, 0), (f"{shown(hacking)}, step {last}", rows, last),
                                (f"{shown(best)} (best gold at the budget), step {best_last}", best_rows, best_last)):  # fmt: skip
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

TRIAL_COLUMNS = {"number": "trial", "state": "state", "params_beta": "β", "params_clip_eps": "clip ε",
                 "user_attrs_seeds": "seeds", "user_attrs_gold_final_se": "final gold s.e.",
                 "user_attrs_gold_peak": "gold peak", "user_attrs_kl_final": "final KL"}  # fmt: skip


def rounded_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials table as a reader wants it: readable column names, parameters to 3 significant digits,
    scores to 3 decimals, and a pruned trial's last report said to be what it is (an intermediate gold
    at a step, not a final one)."""
    value = next((c for c in trials if c in ("value_gold_final", "values_gold_final")), None)
    frame = trials[[c for c in ["number", "state", "params_beta", "params_clip_eps", value, *TRIAL_COLUMNS]
                    if c in trials and c is not None]].loc[:, lambda f: ~f.columns.duplicated()].copy()  # fmt: skip
    for column in [c for c in frame if c.startswith("params_")]:
        frame[column] = frame[column].map(lambda x: float(f"{x:.3g}") if pd.notna(x) else x)
    if value is not None:
        complete = frame["state"] == "COMPLETE"
        frame[value] = [f"{v:.3f}" if done else (f"— (pruned; last report {v:.3f}, intermediate)" if pd.notna(v) else "—")
                        for v, done in zip(frame[value], complete)]  # fmt: skip
    if "user_attrs_seeds" in frame:
        frame["user_attrs_seeds"] = frame["user_attrs_seeds"].map(lambda x: str(int(x)) if pd.notna(x) else "— (pruned)")
    return frame.rename(columns={**TRIAL_COLUMNS, **({value: "final gold (mean over seeds)"} if value else {})})


def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'

def table(frame: pd.DataFrame) -> str:
    """A frame as an HTML table, floats to three decimals; a missing value reads "—" (the table's own
    text says why a cell can be empty), never NaN."""
    return frame.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="t", escape=False,
                         na_rep="—")

def fmt_fit(fit: dict) -> str:
    """A Gao fit's coefficients (α_G, β_G: the form's, not the KL coefficient β), R², intervals, and its
    peak only where the peak rule quotes one."""
    text = (f"α_G = {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, β_G = {fit['beta']:.3f} ± {fit['beta_se']:.3f} "
            f"(± fit s.e.), R² = {fit['r2']:.3f} ({fit['points']} points)")  # fmt: skip
    if "alpha_ci" in fit and np.isfinite(fit["alpha_ci"][0]):
        text += (f"; 95 % bootstrap CI over {fit['n_seeds']} seeds: α_G [{fit['alpha_ci'][0]:.3f}, {fit['alpha_ci'][1]:.3f}],"
                 f" β_G [{fit['beta_ci'][0]:.3f}, {fit['beta_ci'][1]:.3f}]")  # fmt: skip
    if "quoted_peak_kl" not in fit:  # best-of-n: peak inside or beyond the n measured, said in the findings
        return text + f"; the form's peak at KL = {fit['peak_kl']:.2f} nats"
    if fit["quoted_peak_kl"] is not None:
        return text + f"; peak at KL = {fit['quoted_peak_kl']:.2f} nats (gain {fit['peak_gain']:+.3f})"
    misfit = "; ".join(fit.get("misfit", []))
    return text + f"; no peak quoted: {fit['why_no_peak']}" + (f" (the curves show {misfit})" if misfit else "")

METHODS = (
    "<p><b>Design and statistics.</b> Each setting runs under several seeds (the policy's sampling and the prompt "
    "order). A run stops at its first evaluation whose KL to SFT reaches <code>ppo.kl_budget</code>, or at the "
    "iteration cap, so that every objective gets the same distance budget. The endpoints were declared before the "
    "data: per run, read on its curve up to the KL budget, gold at the budget (where the run crosses it, "
    "interpolated between the evaluations around the crossing: a run stops at the first evaluation past the budget, "
    "which can lie tens of nats beyond it; a run the iteration cap stopped short of the budget is read where it "
    "stopped, and the tables give the KL each run reached), the gold peak and the KL there, gold where the run first "
    "reaches each distance of <code>report.d_grid</code> (d = √KL, interpolated), and the gold drop (peak − gold at "
    "the budget). The primary family has one endpoint per question: the gold peak of each ensemble "
    "objective against the single RM of its condition; gold at the budget of each β against β = 0; best-of-n gold at "
    "the largest n of each objective against the single RM, per condition, paired over prompts (95 % bootstrap "
    "interval over prompts, sign-flip permutation p). Over seeds, differences are Welch's t (unequal variances; "
    "interval and two-sided p; seeds are independent runs). Holm's step-down correction over the whole primary "
    "family keeps the family-wise error at <code>report.alpha</code>; \"supported\" means after it, and a "
    "supported negative difference is reported as a harm. Secondary endpoints are shown as estimates with "
    "intervals and no verdict. Power: the difference each comparison detects with 80 % power at Holm's strictest "
    "level α/m (a lower bound on the corrected test's power), from the observed spread; seeds needed: per side, "
    "for a difference of the observed size at that level. Robust: the verdict is unchanged with any one seed "
    "left out of every setting (Holm recomputed each time). Counts of seeds (over-optimised k of n) carry Wilson's "
    "95 % interval. Curves against distance are each seed's curve interpolated on a common d grid and averaged where "
    f"at least two seeds reach that d; the 95 % t band is drawn only where at least {MIN_BAND_SEEDS} do (a two-seed t band spans "
    "±12.7 standard errors), correlations' bands are clipped to [−1, 1], and the y-axis is set by the means and their "
    "bands; with five seeds or fewer each seed is drawn thin. Curves over training (iterations) average the seeds at "
    "shared steps, by the same band rule. Gao et al.'s forms are fitted by least squares to the seeds' pooled points "
    "(coefficients α_G, β_G: the form's, not the KL coefficient β), with a percentile bootstrap over seeds; a fit's "
    f"peak is quoted only when R² ≥ {MIN_FIT_R2:g}, its curve turns over, and the peak lies inside the distances "
    "measured.</p>"
)

def fit_sentence(condition: str, fit: dict) -> str:
    """Gao's RL form for one condition, honestly: its peak where the peak rule quotes one, else that the
    form does not fit and what in the curves it misses."""
    coefficients = f"α_G = {fit['alpha']:.2f}, β_G = {fit['beta']:.2f}, R² = {fit['r2']:.2f}"
    if fit.get("quoted_peak_kl") is not None:
        return f"{condition}: the form fits ({coefficients}); its gold peak at KL {fit['quoted_peak_kl']:.1f} nats."
    why = "; ".join(fit.get("misfit", []))
    return (f"{condition}: no peak quoted, {fit.get('why_no_peak', 'the form does not fit')} ({coefficients})"
            + (f"; the curves show {why}" if why else "") + ".")


STUDY_SEEDS = 20  # examples/study: the seeds per setting that carry the verdicts


def power_ranges(family: pd.DataFrame) -> str:
    """Per question, the smallest difference the design detects at 80 % power (range over its comparisons)."""
    parts = []
    for question, name in (("beta", "β vs β = 0, gold at the budget"), ("ensemble", "ensemble vs single RM, gold peak"),
                           ("bon", "best-of-n objectives, over prompts")):  # fmt: skip
        mde = family.loc[family["question"] == question, "mde"].dropna()
        if len(mde):
            low, high = mde.min(), mde.max()
            parts.append(f"{name}: ±{low:.2f}" + (f"–{high:.2f}" if high - low >= 0.005 else "") + " gold")
    return "; ".join(parts)


def synthesis(runs: pd.DataFrame, rl: dict, counts: pd.DataFrame, family: pd.DataFrame, cfg: Config) -> str:
    """The first screen: the design and its power, the supported findings with their sizes, the counts
    with intervals, and what this many seeds cannot decide (and which example decides it)."""
    r = cfg.report
    seeds = sorted(runs["seed"].unique())
    reached = runs["budget_reached"].astype(bool) if "budget_reached" in runs else pd.Series(True, index=runs.index)
    zero_cap = runs[~reached & (runs["beta"] == 0)]
    budget = cfg.ppo.kl_budget
    design = (f"{runs['setting'].nunique()} PPO settings × {len(seeds)} seeds"
              + (f", each run read where it crosses the KL budget of {budget:g} nats (interpolated between evaluations); "
                 f"{int((~reached).sum())} of {len(runs)} runs stopped at the {cfg.ppo.iterations}-iteration cap short of it "
                 f"and are read where they stopped ({len(zero_cap)} of them at β = 0)" if budget is not None else
                 ", each run read at its last evaluation (no KL budget)") + ".")  # fmt: skip
    lines = [f"<b>Design.</b> {design}"]
    if len(seeds) < STUDY_SEEDS:
        lines.append(f"<b>What this report is.</b> With {len(seeds)} seeds per setting this is a tour of the analyses: "
                     "its verdicts move between machines of the same kind and between seed sets. "
                     f"<code>examples/study/params.yaml</code> ({STUDY_SEEDS} seeds per setting) gives the verdicts.")  # fmt: skip
    if not family.empty:
        m = int(family["family_size"].iloc[0])
        lines.append(f"<b>Power.</b> {m} primary comparisons, Holm at {r.alpha:g}. Smallest difference each detects "
                     f"with 80 % power: {power_ranges(family)}.")  # fmt: skip
        supported = family[family["verdict"] != "not supported"]
        if supported.empty:
            lines.append(f"<b>Findings.</b> None of the {m} comparisons is supported at this size.")
        else:
            lines.append(f"<b>Findings</b> ({len(supported)} of {m} supported; each with its size and 95 % CI):<ul>"
                         + "".join(f"<li>{finding(row, r.alpha)}</li>" for _, row in supported.iterrows()) + "</ul>")
    single = counts[(counts["objective"] == "single") & (counts["beta"] == 0)]
    if not single.empty:
        over = "; ".join(f"{row['condition']}: {row['rate [95 % Wilson CI]']}" for _, row in single.iterrows())
        lines.append(f"<b>Over-optimisation</b> (β = 0, single RM; gold fell ≥ {r.overopt_drop:g} from its peak while "
                     f"the proxy rose), seeds: {over}. Gao's RL form d(α_G − β_G log d): "
                     + " ".join(fit_sentence(c, f) for c, f in rl.items()))  # fmt: skip
    if not family.empty:
        open_rows = family[family["verdict"] == "not supported"]
        if not open_rows.empty:
            items = "; ".join(f"{comparison_name(row)} ({row['diff']:+.3f}, detectable ±{row['mde']:.2f}"
                              + (f", needs {int(row['seeds_needed'])} seeds a side" if row["question"] != "bon"
                                 and pd.notna(row["seeds_needed"]) else "") + ")"
                              for _, row in open_rows.iterrows())  # fmt: skip
            lines.append(f"<b>Not decidable at this size</b> ({len(open_rows)}): {items}. "
                         f"<code>examples/study/params.yaml</code> runs the same design with {STUDY_SEEDS} seeds per "
                         "setting (two disjoint sets, each deciding the family again): the size these need, or the "
                         "evidence that a difference is smaller than that size can see.")  # fmt: skip
    return "<h2>Summary</h2>" + "".join(f"<p>{line}</p>" for line in lines)


def findings_section(family: pd.DataFrame, bon: pd.DataFrame) -> str:
    """Every primary comparison as a table (the summary above names the supported ones), and where
    best-of-n's Gao form puts its peak."""
    parts = ["<h2>Every primary comparison</h2>"]
    parts.append(table(family_table(family)) if not family.empty else "<p>No primary comparison: the grid lacks "
                 "the settings each question compares.</p>")  # fmt: skip
    for condition, group in bon[bon["objective"] == "single"].groupby("condition", sort=False):
        fit = fit_gao(np.sqrt(group["kl_exact"]), group["gold"] - group["gold"].iloc[0], "bon")
        top = int(group["n"].max())
        where = (f"beyond n = {top} (KL {fit['peak_kl']:.2f} nats against {group['kl_exact'].max():.2f} at n = {top})"
                 if fit["peak_kl"] > group["kl_exact"].max() else f"inside the data (KL {fit['peak_kl']:.2f} nats)")  # fmt: skip
        parts.append(f"<p>{condition}: best-of-n by the single RM, Gao's form d(α_G − β_G d) (R² = {fit['r2']:.2f}) "
                     f"puts the gold peak {where}.</p>")  # fmt: skip
    return "".join(parts)


def describe_gold(cfg: Config) -> str:
    kind = gold_kind(cfg)
    if kind == "builtin":
        return "gold is the task's programmatic reward"
    if kind == "callable":
        return f"gold is the callable <code>{html.escape(cfg.task.gold)}</code>"
    return f"gold is the reward model <code>{html.escape(cfg.task.gold)}</code>"

def describe_conditions(cfg: Config) -> str:
    return "; ".join(f"{name}: " + (", ".join(f"{s}.{k} = {v}" for s, keys in over.items() for k, v in keys.items())
                                    or "as params.yaml") for name, over in cfg.reward_conditions.items())  # fmt: skip

def style_page(title: str, sections: list[str]) -> str:
    style = ("body{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}img{display:block;margin:0.5em 0}"
             ".t{border-collapse:collapse;font-size:12px;margin:0.5em 0}.t td,.t th{padding:2px 8px;"
             "border-bottom:1px solid #ddd}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"  # fmt: skip

def fmt_sig(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def shown_note(requested: str, shown: str, key: str) -> list[str]:
    """Where the report shows another setting than ``report.<key>`` names, it says so."""
    return [] if requested == shown else [f"<p>report.{key}: {html.escape(requested)} is not among the runs; "
                                          f"shown instead: {html.escape(shown)}.</p>"]  # fmt: skip


def fits_text(rl: dict, bon_fit: dict, cfg: Config) -> str:
    """Section 1's fits: the RL form per condition (pooled, mean curve, each seed) and best-of-n's."""
    if rl:
        fits = "<br>".join(f"{c}: {fmt_fit(f)}" + (f"; fit to the mean curve on a common d grid: R² = "
                                                   f"{f['mean_curve']['r2']:.3f}" if f["mean_curve"] else "")
                           for c, f in rl.items())  # fmt: skip
        rl_text = f"<b>RL</b> (β = 0, single RM, seeds pooled; gold gain vs d, read up to the KL budget): {fits}.<br>"
    else:
        rl_text = "No β = 0 run with the single RM: the RL over-optimisation fit is skipped.<br>"
    text = (f"<p>{rl_text}<b>Best-of-n</b> (SFT policy, unbiased estimator over {cfg.best_of_n.samples_per_prompt} "
            "samples per prompt; d from the exact KL of best-of-n over the empirical sample distribution, which "
            f"differs from the bound log n − (n−1)/n only through ties): {fmt_fit(bon_fit)}.</p>")  # fmt: skip
    return text + ("<p>The RL fit of each seed alone:</p>" + table(seed_fit_table(rl)) if rl else "")


def sweep_section(cfg: Config, trials: pd.DataFrame | None, sweep_metrics: dict, png: Path | None, metrics: dict,
                  runs: pd.DataFrame, first: str) -> str:  # fmt: skip
    """Section 7: the study's trials, its best trial against the β grid, importances; or why it is absent."""
    sweep_dir = Path(cfg.paths.sweep)
    if trials is None:
        return f"<p>No sweep results ({html.escape(str(sweep_dir / 'trials.csv'))}): `dvc repro sweep` makes them.</p>"
    best_trial = sweep_metrics.get("sweep.best.trial")
    trial_finals = [json.loads(p.read_text())["gold_final"] for p in
                    sorted((sweep_dir / "trials" / f"trial_{best_trial}").glob("seed_*/metrics.json"))]  # fmt: skip
    best = {"beta": metrics["sweep.best.beta"] or math.nan, "clip_eps": metrics["sweep.best.clip_eps"] or math.nan}
    sweep_note = sweep_against_grid(trial_finals, best, runs, first, cfg.report.alpha) if best_trial is not None else ""
    importance_table, importance_note = importances(sweep_dir, cfg.sweep.storage, cfg.sweep.study_name)
    return "".join([
        embed(png),
        f"<p>Best: β = {fmt_sig(metrics['sweep.best.beta'])}, ε = {fmt_sig(metrics['sweep.best.clip_eps'])} "
        f"({sweep_metrics['sweep.n_trials']} trials, {sweep_metrics['sweep.n_pruned']} pruned; each trial's "
        f"objective is the mean final gold over {cfg.sweep.seeds} seed(s)). {sweep_note} {importance_note}</p>",
        table(importance_table) if importance_table is not None else "",
        table(rounded_trials(trials)),
    ])  # fmt: skip
