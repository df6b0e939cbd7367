"""The math of PPO for language models, as small pure functions of tensors.

Shapes: B responses, T response tokens. ``mask`` is 1 on real response tokens (up to and
including <eos>) and 0 on padding after it. References: Ziegler et al. 2019 (KL penalty, adaptive
controller), Schulman et al. 2016 (GAE) and 2017 (PPO-clip), Huang et al. 2024 ("The N+
implementation details of RLHF with PPO"), Schulman 2020 (k3 KL estimator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the masked entries; ``shift_mean=False`` keeps the mean (for rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def log_softmax_at_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) in float32: (..., V) -> (..., V).

    The temperature used for sampling must divide the logits here too, or the ratio π/π_old and
    the KL are computed for a different distribution than the one that produced the samples.
    """
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 would only copy (B, T, V) floats
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def gather_tokens(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token) from full log-distributions: (B, T, V), (B, T) -> (B, T)."""
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Per-token entropy −Σ p·log p of log-distributions (B, T, V): (B, T)."""
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token log π − log π_ref: unbiased for KL(π‖π_ref) on samples from π, but noisy."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token (r − 1) − log r with r = π_ref/π: unbiased and always ≥ 0 (Schulman 2020)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def kl_between(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token exact KL(π‖π_ref) = Σ_v π(v) (log π(v) − log π_ref(v)) from full log-distributions
    (B, T, V): (B, T)."""
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row (B,). An all-zero row gives 0."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask).argmax(-1)


def per_token_rewards(
    score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β (log π − log π_ref)_t at every response token, plus the score at the last one.

    Returns (rewards (B, T), non_score_reward (B, T)); both are 0 on padding (Ziegler et al. 2019).
    """
    non_score = -beta * kl_k1(logprobs, ref_logprobs) * mask
    rewards = non_score.clone()
    rows = torch.arange(score.shape[0], device=score.device)
    rewards[rows, last_token_index(mask)] += score
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right to left.

    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1}; V and A are 0 past the last real token,
    so the episode ends at <eos>. Returns (advantages, returns = advantages + values), (B, T).
    """
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip: mean over tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), ρ = π/π_old (Schulman et al. 2017).

    Also returns the clip fraction and the approx-KL to the old policy, ½·E[(log ρ)²].
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½ · mean over tokens of max((V − R)², (clip(V, V_old ± c) − R)²) (clipped value loss)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over real tokens; 1 is a perfect critic, ≤ 0 a useless one."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / var_returns)


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


@dataclass
class AdaptiveKLController:
    """β_{t+1} = β_t · (1 + clip(KL/target − 1, −0.2, 0.2) · n_steps / horizon) (Ziegler et al. 2019, §2.2)."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
