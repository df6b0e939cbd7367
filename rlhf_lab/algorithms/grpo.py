"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath), with the aggregation variants
of Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025), as TRL names them: group-normalised
advantages, a token-level clipped ratio with separate lower and upper ε, and the k3 estimate of
KL(π‖π_ref) added to the loss with weight β."""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, k: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """(r − mean of the prompt's group) / (std + eps): (B,) -> (B,), B = prompts · k.

    ``scale``: ``group`` divides by the group's std, ``batch`` by the std over the whole batch, ``none``
    does not divide (Dr. GRPO: the std scaling favours prompts that are too easy or too hard). The std is
    the unbiased sample std, as torch computes it by default."""
    if k < 2:
        raise ValueError(f"GRPO needs k >= 2 responses per prompt, got {k}")
    if scale not in SCALES:
        raise ValueError(f"scale_rewards must be one of {SCALES}, got {scale!r}")
    grouped = rewards.view(-1, k)
    centred = (grouped - grouped.mean(-1, keepdim=True)).reshape(-1)
    if scale == "group":
        return centred / (grouped.std(-1).repeat_interleave(k) + eps)
    if scale == "batch":
        return centred / (rewards.std() + eps)
    return centred


def token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                 advantages: torch.Tensor, eps_low: float, eps_high: float, beta: float) -> torch.Tensor:  # fmt: skip
    """Per-token loss −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A) + β · k3_t, ρ_t = π/π_old at token t,
    k3_t = exp(log π_ref − log π) − (log π_ref − log π) − 1 (Schulman 2020): (B, T) -> (B, T)."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    if beta != 0.0 and ref_logprobs is not None:
        delta = ref_logprobs - logprobs
        loss = loss + beta * (torch.exp(delta) - delta - 1)
    return loss


def aggregate(losses: torch.Tensor, mask: torch.Tensor, how: str, max_tokens: int | None = None,
              batch_tokens: int | None = None) -> torch.Tensor:  # fmt: skip
    """The scalar loss from per-token losses (B, T) of one minibatch:

    - ``grpo``: each response's mean over its tokens, then the mean over responses (long responses'
      tokens weigh less);
    - ``bnpo``: the sum over the minibatch's tokens / its token count;
    - ``dr_grpo``: the sum / (B · ``max_tokens``), a constant: no length bias;
    - ``dapo``: the sum / ``batch_tokens``, the token count of the whole generation batch that the
      minibatches split, so every token of the batch weighs alike across minibatches.
    """
    mask = mask.to(losses.dtype)
    total = (losses * mask).sum()
    if how == "grpo":
        return ((losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if how == "bnpo":
        return total / mask.sum().clamp(min=1)
    if how == "dr_grpo":
        if max_tokens is None:
            raise ValueError("dr_grpo needs max_tokens (the response length limit)")
        return total / (losses.shape[0] * max_tokens)
    if how == "dapo":
        if batch_tokens is None:
            raise ValueError("dapo needs batch_tokens (the generation batch's token count)")
        return total / max(batch_tokens, 1)
    raise ValueError(f"loss_type must be one of {AGGREGATIONS}, got {how!r}")
