"""PPO for language models: the online loop of :mod:`rlhf_lab.engine.online` with a critic.

Four models: the policy (trainable, from SFT), a frozen reference (SFT; with LoRA, the policy with
its adapter switched off), frozen reward model(s), and a value model (trainable; by default a copy
of reward member 0, Huang et al. 2024 §"value model initialisation"; or a head shared with the
policy). PPO's part of an iteration: 3 per-token rewards (KL penalty everywhere, the score at the
last token) and GAE, 4 the clipped policy and value losses (rlhf_lab/algorithms/ppo.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from rlhf_lab.algorithms import ppo as pm
from rlhf_lab.config import PPOConfig
from rlhf_lab.engine.online import (  # noqa: F401 - the PPO stage and tests import these from here
    OnlinePolicyModule,
    Rollout,
    iteration_of,
    optimizer_steps_per_iteration,
    prompt_schedule,
    response_logits,
)
from rlhf_lab.models.generation import Samples
from rlhf_lab.rewards.reward_model import token_scores


class PPOModule(OnlinePolicyModule):
    metric_prefix = "ppo"

    def __init__(
        self,
        cfg: PPOConfig,
        policy: torch.nn.Module,
        ref_policy: torch.nn.Module | None,
        reward_models: list[torch.nn.Module],
        value_model: torch.nn.Module | None,
        eos_token_id: int,
        pad_token_id: int,
        reward_inputs: Callable | None = None,
    ):
        super().__init__(cfg, policy, ref_policy, reward_models, eos_token_id, pad_token_id, reward_inputs)
        self.value_model = value_model
        self.value_head = None
        if cfg.value_model == "shared":
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            # The head reads the policy's final hidden states as its LM head does: whatever the model,
            # and without output_hidden_states, which transformers 5 loses in an unpickled model (ddp_spawn).
            policy.get_output_embeddings().register_forward_hook(self._keep_lm_head_input)
        self.finish_init()

    def extra_models(self) -> list[torch.nn.Module]:
        return [self.value_model] if self.value_model is not None else []

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return list((self.value_head if self.value_head is not None else self.value_model).parameters())

    # ---------------------------------------------------------------- forward helpers
    def _keep_lm_head_input(self, _module, args, _output) -> None:
        self._lm_head_input = args[0]

    def _response_logits_and_values(self, seq: torch.Tensor, mask: torch.Tensor, prompt_len: int,
                                     need_logits: bool = True):  # fmt: skip
        """Policy logits predicting each response token (B, R, V) and values (B, R).

        The value of response token t is read at the position before it, the state it was chosen in.
        Without ``need_logits`` (rollout values) the policy runs only if it carries the value head.
        """
        R = seq.shape[1] - prompt_len
        if self.value_head is not None:
            logits = response_logits(self.policy, seq, mask, R)
            features = self._lm_head_input[:, :-1]  # (B, R, H), the states logits were read from
            return logits, self.value_head(features).squeeze(-1)
        logits = response_logits(self.policy, seq, mask, R) if need_logits else None
        values = token_scores(self.value_model, seq, mask)
        return logits, values[:, prompt_len - 1 : prompt_len - 1 + R]

    def rollout_values(self, seq: torch.Tensor, seq_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        return self._response_logits_and_values(seq, seq_mask, prompt_len, need_logits=False)[1]

    # ---------------------------------------------------------------- 3: per-token rewards and GAE
    def advantages(self, samples: Samples, scores: torch.Tensor, ref_logprobs: torch.Tensor,
                   values: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        cfg, mask = self.cfg, samples.response_mask
        rewards, _ = pm.per_token_rewards(scores, samples.logprobs, ref_logprobs, mask, self.kl_ctl.value)
        advantages, returns = pm.gae(rewards, values.float(), mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = pm.masked_whiten(advantages, mask)
        return advantages, {"old_values": values.float() * mask, "returns": returns, "rewards": rewards}

    def rollout_stats(self, ro: Rollout) -> dict[str, float]:
        mask = ro.samples.response_mask
        return {
            "non_score_reward": (ro.extra["rewards"].sum(1) - ro.scores).mean().item(),
            "explained_variance": pm.explained_variance(ro.extra["old_values"], ro.extra["returns"], mask),
        }

    # ---------------------------------------------------------------- 4: the losses
    def minibatch_losses(self, seq, seq_mask, P: int, response_ids, old_logprobs, ref_logprobs, advantages, mask,
                         old_values, returns, rewards=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
        """The PPO objective on one minibatch: clipped policy loss + c·clipped value loss − entropy bonus."""
        cfg = self.cfg
        logits, values = self._response_logits_and_values(seq, seq_mask, P)
        logp = pm.log_softmax_at_temperature(logits, cfg.temperature)  # (B, R, V), shared with the entropy
        logprobs = pm.gather_tokens(logp, response_ids)
        pg_loss, pg_stats = pm.policy_loss(logprobs, old_logprobs, advantages, mask, cfg.clip_eps)
        vf_loss, vf_stats = pm.value_loss(values.float(), old_values, returns, mask, cfg.clip_value)
        # Logged always; differentiated only when it is part of the loss.
        entropy = pm.masked_mean(pm.entropy_from_logprobs(logp if cfg.entropy_coef else logp.detach()), mask)
        loss = pg_loss + cfg.vf_coef * vf_loss - cfg.entropy_coef * entropy
        stats = {
            "policy_loss": pg_loss.detach(), "value_loss": vf_loss.detach(), "entropy": entropy.detach(),
            "clipfrac": pg_stats["clipfrac"], "approx_kl": pg_stats["approx_kl"], "value_clipfrac": vf_stats["clipfrac"],
        }  # fmt: skip
        return loss, stats
