"""RLOO and GRPO on the shared online loop: a toy reward they must raise, k responses per prompt."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_lab.config import PPOConfig, RuntimeConfig
from rlhf_lab.engine.critic_free import GRPOModule, RLOOModule
from rlhf_lab.runtime.stage import make_trainer
from tests.test_ppo import History, TokenCountReward


@pytest.mark.parametrize("module_class, algorithm, extra", [
    (RLOOModule, "rloo", {}),
    (GRPOModule, "grpo", {"loss_type": "dapo"}),
    (GRPOModule, "grpo", {"loss_type": "grpo", "scale_rewards": "none", "clip_eps_high": 0.28}),
])  # fmt: skip
def test_critic_free_optimisers_raise_a_toy_reward(module_class, algorithm, extra):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    ref.load_state_dict(policy.state_dict())
    ppo = PPOConfig(algorithm=algorithm, samples_per_prompt=4, iterations=25, batch_size=32, ppo_epochs=2,
                    minibatches=2, beta=0.01, lr=3e-3, max_new_tokens=8, **extra)  # fmt: skip
    module = module_class(ppo, policy, ref, [TokenCountReward()], eos_token_id=3, pad_token_id=0)
    assert not any(isinstance(m, torch.nn.Linear) and m is not policy.lm_head for m in module.extra_models())
    prompts = torch.full((8 * 25, 1), 2)  # 8 prompts an iteration, each answered 4 times
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(prompts, torch.ones_like(prompts)), batch_size=8)
    history = History(prefix=algorithm)
    trainer = make_trainer(RuntimeConfig(), logger=False, max_steps=25 * 4, callbacks=[history], enable_progress_bar=False)
    trainer.fit(module, loader)
    first, last = sum(history.scores[:5]) / 5, sum(history.scores[-5:]) / 5
    assert last > first + 1.0, (first, last)
    assert history.kls[-1] > 0 and all(torch.isfinite(torch.tensor(history.kls)))
