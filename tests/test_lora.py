"""LoRA's reference policy (adapter off = the SFT weights, no second copy) and reward models that
read the policy's samples through their own tokenizer."""

from __future__ import annotations

import torch

from rlhf_lab.config import PPOConfig
from rlhf_lab.engine.ppo_module import PPOModule
from rlhf_lab.models.lora import adapters_disabled, add_lora
from rlhf_lab.rewards.reward_model import Retokenizer, last_token_scores, same_vocabulary, score_texts
from tests.byo import other_word_tokenizer, word_tokenizer

TEXTS = ["the food was great", "the staff was rude and cold", "a film was dull"]


def tiny_gpt2(vocab: int, seed: int, head: str = "lm"):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_layer=1, n_embd=16, n_head=2, n_positions=64, num_labels=1,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return (GPT2LMHeadModel if head == "lm" else GPT2ForSequenceClassification)(config).eval()


def test_the_lora_reference_is_the_base_model_and_the_policy_moves_away_from_it():
    policy, sft = tiny_gpt2(40, seed=0), tiny_gpt2(40, seed=0)
    add_lora(policy, {"r": 4, "alpha": 8})
    with torch.no_grad():  # a trained adapter: B ≠ 0
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reward = tiny_gpt2(40, seed=1, head="cls")
    module = PPOModule(PPOConfig(), policy, None, [reward], None, eos_token_id=2, pad_token_id=0)
    assert module.ref_policy is None and len(module.models()) == 2  # no second copy of the policy
    seq = torch.tensor([[1, 5, 6, 7, 8, 2], [0, 1, 9, 10, 11, 12]])
    mask = (seq != 0).long()
    response = seq[:, 3:]
    ref_logprobs, _ = module.reference_logprobs(seq, mask, response)
    sft_module = PPOModule(PPOConfig(), tiny_gpt2(40, seed=0), sft, [reward], None, eos_token_id=2, pad_token_id=0)
    expected, _ = sft_module.reference_logprobs(seq, mask, response)
    assert torch.allclose(ref_logprobs, expected, atol=1e-5)  # adapter off: exactly the SFT weights
    with torch.no_grad():
        on = policy(input_ids=seq, attention_mask=mask).logits
        with adapters_disabled(policy):
            off = policy(input_ids=seq, attention_mask=mask).logits
    assert (on - off).abs().max() > 1e-2  # the adapter is on again for training
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)


def test_reward_models_of_another_tokenizer_score_the_decoded_text():
    from rlhf_lab.models.generation import left_pad

    words = sorted(set(" ".join(TEXTS).split()))
    policy_tokenizer = word_tokenizer(words)
    reward_tokenizer = other_word_tokenizer(words)  # the same words under other ids
    assert not same_vocabulary(policy_tokenizer, reward_tokenizer)
    assert same_vocabulary(policy_tokenizer, word_tokenizer(words))
    reward = tiny_gpt2(len(reward_tokenizer), seed=2, head="cls")
    reward.config.pad_token_id = reward_tokenizer.pad_token_id
    prompts, responses = ["the food", "the staff", "a film"], ["was great", "was rude and cold", "was dull"]
    prompt_ids, prompt_mask = left_pad(policy_tokenizer, prompts)
    reply = [policy_tokenizer.encode(r, add_special_tokens=False) + [policy_tokenizer.eos_token_id] for r in responses]
    width = max(map(len, reply))
    reply_ids = torch.tensor([r + [policy_tokenizer.pad_token_id] * (width - len(r)) for r in reply])
    reply_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in reply])
    seq, mask = torch.cat([prompt_ids, reply_ids], 1), torch.cat([prompt_mask, reply_mask], 1)
    ids, new_mask = Retokenizer(policy_tokenizer, reward_tokenizer, 64)(seq, mask, prompt_ids.shape[1])
    by_ids = last_token_scores(reward, ids, new_mask)
    # By hand: the reward model's own scoring of the texts, as the reward stage scores them.
    by_text = score_texts(reward, reward_tokenizer, TEXTS, [True] * 3, 64)
    assert torch.allclose(by_ids, by_text, atol=1e-5)
