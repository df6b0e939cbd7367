"""REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): k responses per
prompt, each one's baseline the mean reward of the other k − 1, the KL to the reference folded into
the sequence reward, and a PPO-clipped ratio of whole-sequence probabilities."""

from __future__ import annotations

import torch


def kl_penalised_reward(scores: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                        mask: torch.Tensor, beta: float) -> torch.Tensor:  # fmt: skip
    """score − β · Σ_t (log π_old − log π_ref): (B,), (B, T), (B, T), (B, T) -> (B,)."""
    return scores - beta * ((old_logprobs - ref_logprobs) * mask).sum(-1)


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """r_i − mean_{j ≠ i} r_j within each prompt's group of k: (B,) -> (B,), B = prompts · k.

    Equal to k/(k − 1) · (r_i − group mean), which is how it is computed."""
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 responses per prompt, got {k}")
    grouped = rewards.view(-1, k)  # (prompts, k)
    return (k / (k - 1) * (grouped - grouped.mean(-1, keepdim=True))).reshape(-1)


def sequence_clipped_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                          mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """PPO's clipped surrogate on the sequence ratio π(y)/π_old(y) = exp Σ_t (log π − log π_old):
    mean over responses of −min(ρA, clip(ρ, 1 − ε, 1 + ε)A). Returns (loss, clipped fraction)."""
    log_ratio = ((logprobs - old_logprobs) * mask).sum(-1)  # (B,)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    return loss, (unclipped != clipped).float().mean()
