"""Reward-ensemble objectives (Coste et al. 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"): mean, worst-case (WCO) and uncertainty-weighted (UWO).

``rewards`` is (K, B): K members' normalised rewards for B responses. The variance is the
*population* variance across members (divisor K), the convention of Coste et al. eq. 3.
"""

from __future__ import annotations

import torch

OBJECTIVES = ("single", "mean", "wco", "uwo")


def mean_objective(rewards: torch.Tensor) -> torch.Tensor:
    return rewards.mean(dim=0)


def worst_case_objective(rewards: torch.Tensor) -> torch.Tensor:
    return rewards.min(dim=0).values


def uncertainty_weighted_objective(rewards: torch.Tensor, lam: float) -> torch.Tensor:
    """mean − λ · Var_k[r_k] (population variance, divisor K)."""
    return rewards.mean(dim=0) - lam * rewards.var(dim=0, unbiased=False)


def aggregate(rewards: torch.Tensor, objective: str, lam: float = 0.0) -> torch.Tensor:
    """The scalar training reward (B,) from member rewards (K, B). ``single`` uses member 0; so does
    ``warm``, for which the stage puts the members' weight average first (rewards/warm.py)."""
    if objective in ("single", "warm"):
        return rewards[0]
    if objective == "mean":
        return mean_objective(rewards)
    if objective == "wco":
        return worst_case_objective(rewards)
    if objective == "uwo":
        return uncertainty_weighted_objective(rewards, lam)
    raise ValueError(f"unknown ensemble objective {objective!r}; expected one of {OBJECTIVES}")


def disagreement(rewards: torch.Tensor) -> torch.Tensor:
    """Per-response std across members (B,): the early-warning signal of reward hacking."""
    return rewards.std(dim=0, unbiased=False)
