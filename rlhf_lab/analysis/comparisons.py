"""The report's comparisons over seeds (pandas around :mod:`rlhf_lab.analysis.stats`): curves as bands at the
shared evaluation steps, each ensemble objective against the single reward model, the sentences that
and the members' agreement on hacked samples.

Inputs are the report's frames: ``runs`` (one row per PPO run: setting, condition, beta, objective,
adaptive, seed, path and its metrics) and ``hist`` (every run's evaluation rows with the same keys).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlhf_lab.analysis.fits import value_at_kl, values_on_d_grid
from rlhf_lab.analysis.stats import Difference, Interval, t_interval, welch_difference
from rlhf_lab.data.files import read_jsonl

OBJECTIVE_NAMES = {"single": "single RM", "mean": "ensemble mean", "wco": "worst-case", "uwo": "uncertainty-weighted",
                   "warm": "WARM (weight average)"}


# A 95 % t band from two seeds spans t_.975,1 = 12.7 standard errors: a triangle that sets the axis
# and says nothing. Bands are drawn from this many seeds on; a mean line from two.
MIN_BAND_SEEDS = 3


def band_rule(frame: pd.DataFrame, min_seeds: int = MIN_BAND_SEEDS, bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """A band frame (columns low, high, n) as drawn: low/high blanked (NaN) where fewer than ``min_seeds``
    seeds stand behind the mean, and clipped to ``bounds`` (e.g. (−1, 1) for a correlation)."""
    out = frame.copy()
    thin = out["n"] < min_seeds
    out.loc[thin, ["low", "high"]] = np.nan
    if bounds is not None:
        out[["low", "high"]] = out[["low", "high"]].clip(*bounds)
    return out


def y_limits(frame: pd.DataFrame, y: str, pad: float = 0.08) -> tuple[float, float] | None:
    """Axis limits that hold every mean line and its drawn band (NaN-free), padded: thin seeds and
    undrawn bands do not set the axis."""
    values = pd.concat([frame[y], frame["low"], frame["high"]]).to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    low, high = float(values.min()), float(values.max())
    span = (high - low) or max(abs(high), 1.0)
    return low - pad * span, high + pad * span


def seed_band(hist: pd.DataFrame, y: str, x: str = "step", interval=t_interval) -> pd.DataFrame:
    """Per setting and shared evaluation step: mean x, and mean y with its 95 % interval over seeds
    (Student t; pass :func:`rlhf_lab.analysis.stats.bootstrap_mean_interval` for a quantity that cannot be
    negative, such as KL, whose t band would reach below 0); kept where at least two seeds share the step,
    the band per :func:`band_rule`. For curves over training (x = step); curves over distance use
    :func:`d_band`."""
    rows = []
    for (setting, step), group in hist.groupby(["setting", "step"], sort=True):
        band = interval(group[y])
        if band.n >= 2:
            rows.append({"setting": setting, "step": step, x: group[x].mean(), y: band.mean, "low": band.ci_low,
                         "high": band.ci_high, "n": band.n})  # fmt: skip
    columns = list(dict.fromkeys(["setting", "step", x, y, "low", "high", "n"]))  # x may be the step itself
    return band_rule(pd.DataFrame(rows, columns=columns))


def d_band(hist: pd.DataFrame, y: str, grid, bounds: tuple[float, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per setting, each seed's ``y`` interpolated where it first reaches each d of ``grid`` (d = √KL),
    then the mean over the seeds that reach it (kept where at least two do) and its 95 % t band
    (per :func:`band_rule`: from three seeds on, clipped to ``bounds``).

    Returns (band: setting, d, y, low, high, n; seeds: setting, seed, d, y). Averaging on d rather than
    on shared steps keeps seeds that travel at different speeds from mixing distances in one point."""
    bands, seeds = [], []
    for setting, group in hist.groupby("setting", sort=False):
        curves = {seed: values_on_d_grid(h["kl"].to_numpy(), h[y].to_numpy(), grid)
                  for seed, h in group.sort_values("step").groupby("seed")}  # fmt: skip
        for seed, values in curves.items():
            seeds += [{"setting": setting, "seed": seed, "d": d, y: v} for d, v in zip(grid, values) if np.isfinite(v)]
        for i, d in enumerate(grid):
            band = t_interval([values[i] for values in curves.values()])
            if band.n >= 2:
                bands.append({"setting": setting, "d": d, y: band.mean, "low": band.ci_low, "high": band.ci_high, "n": band.n})
    frame = pd.DataFrame(bands, columns=["setting", "d", y, "low", "high", "n"])
    return band_rule(frame, bounds=bounds), pd.DataFrame(seeds, columns=["setting", "seed", "d", y])


def matched_kl(runs: pd.DataFrame, requested: float | None) -> float:
    """The KL at which ensemble objectives are compared: the param, else the median KL of the runs' gold peaks."""
    return float(requested) if requested is not None else float(runs["gold_peak_kl"].median())


def ensemble_comparison(runs: pd.DataFrame, hist: pd.DataFrame, requested_kl: float | None) -> pd.DataFrame:
    """β = 0 runs, per condition and objective: gold drop and gold at a matched KL (mean, 95 % CI, n),
    each against the single reward model of the same condition (Welch difference, permutation p)."""
    zero = runs[(runs["beta"] == 0) & ~runs["adaptive"]].copy()
    rows = []
    for condition, group in zero.groupby("condition", sort=False):
        target = matched_kl(group, requested_kl)
        group = group.assign(gold_at_kl=[
            value_at_kl(h["kl"], h["gold"], target) for h in (hist[hist["run"] == run] for run in group["run"])])
        single = group[group["objective"] == "single"]
        for objective in OBJECTIVE_NAMES:
            mine = group[group["objective"] == objective]
            if mine.empty:
                continue
            row = {"condition": condition, "objective": objective, "matched_kl": target}
            row["gold_final"] = t_interval(mine["gold_final"])
            for column in ("gold_drop", "gold_at_kl"):
                row[column] = t_interval(mine[column])
                if objective != "single" and not single.empty:
                    row[f"{column}_vs_single"] = welch_difference(mine[column], single[column])
            rows.append(row)
    return pd.DataFrame(rows)


def member_agreement(runs: pd.DataFrame, kinds: dict[str, str] | None = None,
                     warm_scores: dict[str, np.ndarray] | None = None) -> pd.DataFrame:  # fmt: skip
    """Why ensembles may not help: on the β = 0 policies' final samples, the mean correlation between
    members' scores, and the share of gold-losing samples (gold < 0) that every member rates above
    the SFT average (normalised reward > 0): a hack all members share, which no aggregate can see.
    ``kinds`` names each condition's kind of ensemble (fine-tune seed, pre-train seed) for a column;
    a WARM run's first score is the weight average, kept out of the members' columns. ``warm_scores``
    (a run's path → the weight average's score of each of its final samples) adds whether WARM, whose
    fits start from member 0, sees the hack the members share."""
    rows = []
    zero = runs[(runs["beta"] == 0) & ~runs["adaptive"]]
    # With kinds, one row per setting (settings of one condition and objective may hold other members).
    keys = ["condition", "objective", "setting"] if kinds else ["condition", "objective"]
    for (condition, objective, *setting), group in zero.groupby(keys, sort=False):
        samples = [row for path in group["path"] for row in read_jsonl(Path(path) / "final_samples.jsonl")]
        members = np.array([row["members"] for row in samples])  # (samples, K)
        if objective == "warm":
            members = members[:, 1:]
        gold = np.array([row["gold"] for row in samples])
        objective_score = np.array([row["proxy"] for row in samples])
        if members.shape[1] < 2:
            continue
        corr = np.corrcoef(members.T)
        bad = gold < 0
        kind = "WARM" if objective == "warm" else (kinds or {}).get(condition)
        rows.append({
            **({"ensemble kind": kind, "setting": setting[0]} if kinds else {}),
            "condition": condition, "objective": OBJECTIVE_NAMES[objective], "samples": len(samples),
            "member correlation": float(corr[np.triu_indices_from(corr, 1)].mean()),
            "gold < 0": float(bad.mean()),
            "of those, all members > 0": float((members[bad] > 0).all(axis=1).mean()) if bad.any() else float("nan"),
            "of those, the objective > 0": float((objective_score[bad] > 0).mean()) if bad.any() else float("nan"),
        })  # fmt: skip
        if warm_scores and all(path in warm_scores for path in group["path"]):
            warm = np.concatenate([warm_scores[path] for path in group["path"]])
            rows[-1]["WARM–member correlation"] = float(np.mean([np.corrcoef(warm, m)[0, 1] for m in members.T]))
            rows[-1]["of those, WARM > 0"] = float((warm[bad] > 0).mean()) if bad.any() else float("nan")
    return pd.DataFrame(rows)


def fmt_interval(iv: Interval) -> str:
    return f"{iv.mean:.3f} [{iv.ci_low:.3f}, {iv.ci_high:.3f}]" if np.isfinite(iv.ci_low) else f"{iv.mean:.3f}"


def fmt_difference(diff) -> str:
    if not isinstance(diff, Difference):
        return "—"
    return (f"{diff.diff:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}], "
            f"p = {diff.p:.3f} (perm. {diff.p_permutation:.2f})")  # fmt: skip


def comparison_table(comparison: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "condition": comparison["condition"],
        "objective": comparison["objective"].map(OBJECTIVE_NAMES),
        "n": [iv.n for iv in comparison["gold_drop"]],
        "gold drop, mean [95 % CI]": comparison["gold_drop"].map(fmt_interval),
        "vs single: diff [95 % CI], Welch p": comparison.get("gold_drop_vs_single", pd.Series(dtype=object)).map(fmt_difference),
        "gold at matched KL": comparison["gold_at_kl"].map(fmt_interval),
        "matched KL": comparison["matched_kl"].round(1),
        "vs single ": comparison.get("gold_at_kl_vs_single", pd.Series(dtype=object)).map(fmt_difference),
    })  # fmt: skip
