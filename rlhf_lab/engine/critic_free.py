"""RLOO and GRPO: the online loop with k responses per prompt and no value model. Each is its
algorithm's advantages and loss (rlhf_lab/algorithms) on :class:`OnlinePolicyModule`."""

from __future__ import annotations

import torch

from rlhf_lab.algorithms import grpo, rloo
from rlhf_lab.algorithms import ppo as pm
from rlhf_lab.engine.online import OnlinePolicyModule
from rlhf_lab.models.generation import Samples


class RLOOModule(OnlinePolicyModule):
    """Sequence reward score − β·Σ(log π_old − log π_ref), leave-one-out baseline over the k responses
    of a prompt, PPO-clipped sequence ratio (Ahmadian et al. 2024)."""

    metric_prefix = "rloo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.finish_init()

    def advantages(self, samples: Samples, scores: torch.Tensor, ref_logprobs: torch.Tensor, values=None):
        rewards = rloo.kl_penalised_reward(scores, samples.logprobs, ref_logprobs, samples.response_mask,
                                           self.kl_ctl.value)  # fmt: skip
        return rloo.leave_one_out_advantages(rewards, self.k), {"rewards": rewards}

    def rollout_stats(self, ro) -> dict[str, float]:
        return {"non_score_reward": (ro.extra["rewards"] - ro.scores).mean().item()}

    def minibatch_losses(self, seq, seq_mask, P: int, response_ids, old_logprobs, ref_logprobs, advantages, mask,
                         rewards=None):  # fmt: skip
        _, logprobs = self.policy_logprobs(seq, seq_mask, response_ids)
        loss, clipfrac = rloo.sequence_clipped_loss(logprobs, old_logprobs, advantages, mask, self.cfg.clip_eps)
        return loss, {"policy_loss": loss.detach(), "clipfrac": clipfrac}


class GRPOModule(OnlinePolicyModule):
    """Group-normalised advantages, token-level clipped ratio with ε_low/ε_high, β·k3 KL in the loss,
    aggregated as ``loss_type`` says (Shao et al. 2024; TRL's names and defaults)."""

    metric_prefix = "grpo"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        self.scale = cfg.scale_rewards or "group"
        self.loss_type = cfg.loss_type or "dapo"
        self.eps_high = cfg.clip_eps_high if cfg.clip_eps_high is not None else cfg.clip_eps
        self._batch_tokens = 1
        self.finish_init()

    def advantages(self, samples: Samples, scores: torch.Tensor, ref_logprobs: torch.Tensor, values=None):
        # dapo normalises every minibatch by the token count of the whole generation batch
        self._batch_tokens = int(samples.response_mask.sum())
        return grpo.group_advantages(scores, self.k, self.scale), {}

    def minibatch_losses(self, seq, seq_mask, P: int, response_ids, old_logprobs, ref_logprobs, advantages, mask):
        cfg = self.cfg
        _, logprobs = self.policy_logprobs(seq, seq_mask, response_ids)
        beta = self.kl_ctl.value
        per_token = grpo.token_losses(logprobs, old_logprobs, ref_logprobs, advantages, cfg.clip_eps, self.eps_high, beta)
        # The minibatches split the batch: dapo's count is this minibatch's share of it.
        share = self._batch_tokens * mask.shape[0] // max(cfg.batch_size, 1)
        loss = grpo.aggregate(per_token, mask, self.loss_type, max_tokens=cfg.max_new_tokens, batch_tokens=share)
        ratio = torch.exp(logprobs - old_logprobs)
        clipped = ((ratio < 1 - cfg.clip_eps) | (ratio > 1 + self.eps_high)).float()
        return loss, {"policy_loss": loss.detach(), "clipfrac": pm.masked_mean(clipped, mask)}
