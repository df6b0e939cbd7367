"""Preference math: the Bradley–Terry model, a gold labeller, and reward-model quality measures.

Pure functions of tensors/arrays; the reward stage and its Lightning module call them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    label_smoothing: float = 0.0,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Mean of −log σ(r_chosen − r_rejected − margin) (Bradley & Terry 1952; InstructGPT eq. 1), with
    the two reward-model regularisers against over-optimisation as options.

    ``logsigmoid`` keeps it finite for large reward gaps; the margin (Llama 2) asks the chosen
    reward to win by at least that much. ``label_smoothing`` ε is a conservative target: the chosen
    response wins with probability 1 − ε, not 1, so no finite reward gap is the optimum and gaps stop
    growing once σ(Δ) = 1 − ε. ``center_coef`` η adds η·(r_chosen + r_rejected)² (Eisenstein et al.
    2023's reward centering): the loss sees only differences, so without it the rewards' level drifts
    freely, and a policy can exploit where it lands on unusual inputs.
    """
    diff = r_chosen - r_rejected - margin
    loss = -(1 - label_smoothing) * F.logsigmoid(diff) - label_smoothing * F.logsigmoid(-diff)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss.mean()


def preference_probability(gold_a: np.ndarray, gold_b: np.ndarray, temperature: float) -> np.ndarray:
    """P(a ≻ b) = σ((g_a − g_b) / T); T = 0 is the deterministic limit (ties: 1/2)."""
    diff = np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)
    if temperature == 0:
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return 1.0 / (1.0 + np.exp(-diff / temperature))


def label_pairs(
    gold_a: np.ndarray,
    gold_b: np.ndarray,
    temperature: float,
    flip_fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample "a is preferred" labels from the Bradley–Terry model of the gold reward, then flip
    exactly ``round(flip_fraction · n)`` of them at random (label noise, Coste et al. 2024).

    Returns (a_preferred, flipped), both bool arrays of shape (n,).
    """
    p = preference_probability(gold_a, gold_b, temperature)
    a_preferred = rng.random(p.shape) < p
    flipped = np.zeros(p.shape, dtype=bool)
    flipped[rng.permutation(p.size)[: int(round(flip_fraction * p.size))]] = True
    return a_preferred ^ flipped, flipped


def pairwise_accuracy(r_a: np.ndarray, r_b: np.ndarray, a_preferred: np.ndarray) -> float:
    """Share of pairs where the reward ranks the preferred response higher (ties count half)."""
    diff = np.asarray(r_a) - np.asarray(r_b)
    right = np.where(a_preferred, diff > 0, diff < 0)
    return float(np.mean(right + 0.5 * (diff == 0)))


def preference_log_loss(prob_a: np.ndarray, a_preferred: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the observed labels under predicted P(a ≻ b)."""
    prob_a = np.clip(np.asarray(prob_a, dtype=np.float64), eps, 1 - eps)
    return float(-np.mean(np.where(a_preferred, np.log(prob_a), np.log1p(-prob_a))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # overflow-free


def calibration_bins(prob_a: np.ndarray, a_preferred: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability-diagram bins of predicted P(a ≻ b): count, mean confidence, accuracy per bin.

    Each pair is first oriented so the prediction is ≥ 1/2 (the model's pick), the usual convention
    for binary calibration; bins split [1/2, 1] evenly. Empty bins are left out.
    """
    prob_a, outcome = np.asarray(prob_a, dtype=np.float64), np.asarray(a_preferred, dtype=np.float64)
    flip = prob_a < 0.5
    conf = np.where(flip, 1 - prob_a, prob_a)
    hit = np.where(flip, 1 - outcome, outcome)
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    return [
        {"bin": b, "count": int(sel.sum()), "confidence": float(conf[sel].mean()), "accuracy": float(hit[sel].mean())}
        for b in range(bins)
        if (sel := index == b).any()
    ]


def expected_calibration_error(prob_a: np.ndarray, a_preferred: np.ndarray, bins: int = 10) -> float:
    """ECE = Σ_bins (n_bin / n) · |accuracy − confidence| over :func:`calibration_bins`."""
    rows = calibration_bins(prob_a, a_preferred, bins)
    total = sum(r["count"] for r in rows)
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(stats.spearmanr(x, y).statistic)


def normalisation(scores: np.ndarray) -> tuple[float, float]:
    """(gain, bias) so that gain · r + bias has mean 0 and std 1 on ``scores`` (Ziegler et al. 2019)."""
    std = float(np.std(scores))
    gain = 1.0 / std if std > 0 else 1.0
    return gain, -float(np.mean(scores)) * gain
