"""The PPO stages' files as the report's frames: one row per run (what it was, its metrics, its cost,
the KL budget it ran under, its final samples' diversity) and every run's evaluation history."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rlhf_lab.analysis.fits import distinct_n
from rlhf_lab.config import UserError
from rlhf_lab.data.files import read_jsonl


def load_runs(ppo_dir: Path, settings=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per PPO run: setting, condition, beta, objective, adaptive, seed, metrics…; the eval
    history of every run). A setting is one ``ppo_runs`` entry; it has one run per seed."""
    runs, histories = [], []
    seed_dirs = sorted(ppo_dir.glob("*/seeds/seed_*"), key=lambda p: (p.parts[-3], int(p.name.split("_")[1])))
    if settings:  # only this params file's settings: folders another params file left are not its runs
        seed_dirs = [p for p in seed_dirs if p.parts[-3] in settings]
    for path in (p for p in seed_dirs if (p / "eval_history.csv").is_file()):
        meta = {k: v for k, v in json.loads((path / "run.json").read_text()).items()
                if k in ("algorithm", "condition", "objective", "beta", "adaptive", "seed", "round_start")}  # fmt: skip
        meta["setting"] = path.parts[-3]
        meta["run"] = f"{meta['setting']}/seed_{meta['seed']}"
        metrics = json.loads((path / "metrics.json").read_text())
        meta["kl_budget"] = kl_budget_of(path)
        if (path / "cost.json").is_file():  # what the run cost (section 9)
            metrics.update(json.loads((path / "cost.json").read_text()))
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


def kl_budget_of(seed_dir: Path) -> float | None:
    """The KL budget a run ran under, from the config saved beside it (a setting may override it)."""
    saved = seed_dir / "config.yaml"
    if not saved.is_file():
        return None
    budget = (yaml.safe_load(saved.read_text()) or {}).get("ppo", {}).get("kl_budget")
    return float(budget) if budget is not None else None
