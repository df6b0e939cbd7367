"""DPO and IPO on the shared loop: the first loss is log 2 (DPO) at the reference, and training on
pairs that prefer one token makes the policy prefer it."""

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_lab.config import PPOConfig, RuntimeConfig
from rlhf_lab.engine.direct import DirectAlignmentModule
from rlhf_lab.runtime.stage import make_trainer
from tests.test_ppo import TokenCountReward


class Losses(Callback):
    def __init__(self, prefix):
        self.prefix, self.losses, self.accuracy = prefix, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics[f"{self.prefix}/loss"]))
        self.accuracy.append(float(trainer.callback_metrics[f"{self.prefix}/accuracy"]))


def toy_pairs(n: int) -> tuple[torch.Tensor, ...]:
    """Prompt <bos>; chosen 5 5 <eos>, rejected 6 6 6 <eos> (unequal lengths: the mask counts)."""
    prompt = torch.full((n, 1), 2)
    chosen = torch.tensor([[5, 5, 3, 0]] * n)
    rejected = torch.tensor([[6, 6, 6, 3]] * n)
    return prompt, torch.ones_like(prompt), chosen, (chosen != 0).long(), rejected, torch.ones_like(rejected)


@pytest.mark.parametrize("algorithm, beta", [("dpo", 0.1), ("ipo", 0.5)])
def test_direct_alignment_learns_the_preferred_response(algorithm, beta):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)  # fmt: skip
    policy, ref = GPT2LMHeadModel(cfg), GPT2LMHeadModel(cfg)
    ref.load_state_dict(policy.state_dict())
    ppo = PPOConfig(algorithm=algorithm, iterations=30, batch_size=16, beta=beta, lr=1e-2, max_new_tokens=4)
    module = DirectAlignmentModule(ppo, policy, ref, [TokenCountReward()], eos_token_id=3, pad_token_id=0)
    module.use_pairs(toy_pairs(64), seed=0)
    losses = Losses(algorithm)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(30)), batch_size=1)
    trainer = make_trainer(RuntimeConfig(), logger=False, max_steps=30, callbacks=[losses], enable_progress_bar=False)
    trainer.fit(module, loader)
    start = math.log(2) if algorithm == "dpo" else (1 / (2 * beta)) ** 2  # h = 0 at the reference
    assert losses.losses[0] == pytest.approx(start, rel=1e-5)
    assert losses.losses[-1] < 0.5 * losses.losses[0] and losses.accuracy[-1] == 1.0
    with torch.no_grad():
        next_token = policy(torch.tensor([[2]])).logits[0, -1].softmax(-1)
    assert next_token[5] > next_token[6]  # the chosen response's first token is now the likelier
