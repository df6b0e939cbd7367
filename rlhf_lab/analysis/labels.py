"""One mapping from a setting (a ``ppo_runs`` entry) to the name a reader sees, used by every legend
and table of the report: "β = 0.01", "β = 0, noisy, UWO", never the internal key ``noisy_beta0_uwo``."""

from __future__ import annotations

import pandas as pd

OBJECTIVE_SHORT = {"single": "", "mean": "mean", "wco": "worst-case", "uwo": "UWO", "warm": "WARM"}
ALGORITHM_NAMES = {"ppo": "", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO", "ipo": "IPO"}


def setting_label(beta: float, objective: str = "single", condition: str = "", first: str = "",
                  algorithm: str = "ppo", adaptive: bool = False) -> str:  # fmt: skip
    """A setting's readable name from what it is: its β (initial β for the adaptive controller), then
    only what differs from the study's default: the reward condition when not the first, the
    training objective when not the single RM, the optimiser when not PPO."""
    parts = [f"β = {beta:g}" + (" (adaptive)" if adaptive else "")]
    if condition and condition != first:
        parts.append(condition)
    parts += [name for name in (OBJECTIVE_SHORT.get(objective, objective), ALGORITHM_NAMES.get(algorithm, algorithm)) if name]
    return ", ".join(parts)


def setting_labels(runs: pd.DataFrame, first: str) -> dict[str, str]:
    """{setting key: label} over the frame's settings; two settings that read alike keep their key in
    brackets, so no two lines of a legend share a name."""
    meta = runs.drop_duplicates("setting").set_index("setting")
    labels = {setting: setting_label(float(row["beta"]), row.get("objective", "single"), row.get("condition", ""),
                                     first, row.get("algorithm", "ppo"), bool(row.get("adaptive", False)))
              for setting, row in meta.iterrows()}  # fmt: skip
    taken = pd.Series(labels).value_counts()
    return {s: (f"{label} [{s}]" if taken[label] > 1 else label) for s, label in labels.items()}
