"""Direct alignment from preference pairs, without a reward model: DPO (Rafailov et al. 2023) and IPO
(Azar et al. 2023), on the policy's and the frozen reference's log-probabilities of the chosen and
rejected responses. Shapes: (P,) per pair, or (P, T) per token with a mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2 = math.log(2.0)


def sequence_logprob(token_logprobs: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Σ_t log π(y_t | …) over the response tokens, or its mean over them (IPO): (P, T) -> (P,)."""
    total = (token_logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def preference_margin(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                      ref_rejected: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)): (P,) each -> (P,)."""
    return (chosen - ref_chosen) - (rejected - ref_rejected)


def dpo_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """−log σ(β h), averaged over pairs; log 2 at the reference (h = 0)."""
    return -F.logsigmoid(beta * margin).mean()


def ipo_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """(h − 1/(2β))², averaged over pairs, with h from per-token mean log-probabilities (Azar et al.,
    eq. 17; TRL averages over tokens for IPO): the regression target keeps the margin finite."""
    return ((margin - 1 / (2 * beta)) ** 2).mean()


def implicit_reward_accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Share of pairs whose implicit reward ranks the chosen response first (h > 0)."""
    return (margin > 0).float().mean()
