"""The critic-free and direct-alignment optimisers' math against hand computations, with responses
of unequal length (masking)."""

import math

import pytest
import torch

from rlhf_lab.algorithms import dpo, grpo, rloo

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # a 3-token and a 2-token response


def test_rloo_with_two_samples_is_the_difference_of_the_pair():
    assert rloo.leave_one_out_advantages(torch.tensor([1.0, 3.0, 5.0, 2.0]), k=2).tolist() == [-2.0, 2.0, 3.0, -3.0]


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    # k = 3: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5
    advantages = rloo.leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]), k=3)
    assert advantages.tolist() == pytest.approx([-3.0, -1.5, 4.5])
    with pytest.raises(ValueError, match="k >= 2"):
        rloo.leave_one_out_advantages(torch.tensor([1.0, 2.0]), k=1)


def test_rloo_folds_the_kl_into_the_sequence_reward_over_real_tokens_only():
    old = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.0], [-2.0, -3.0, 5.0]])  # the padding's 5 must not count
    # row 0: Σ(old − ref) = 0.5 + 0 + 1 = 1.5 → 1 − 0.15; row 1: 0 + 1 = 1 → 2 − 0.1
    rewards = rloo.kl_penalised_reward(torch.tensor([1.0, 2.0]), old, ref, MASK, beta=0.1)
    assert rewards.tolist() == pytest.approx([0.85, 1.9])


def test_rloo_clips_the_sequence_ratio():
    old = torch.zeros(2, 3)
    new = torch.tensor([[0.1, 0.1, 0.1], [-0.25, -0.25, 9.0]])  # log ratios 0.3 and −0.5 (padding ignored)
    loss, clipped = rloo.sequence_clipped_loss(new, old, torch.tensor([1.0, -1.0]), MASK, clip_eps=0.2)
    # ρ = e^0.3 = 1.35 > 1.2 with A = 1 → −1.2; ρ = e^−0.5 = 0.61 < 0.8 with A = −1 → −min(−0.61, −0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2) and clipped.item() == 1.0


def test_grpo_advantages_by_each_scaling():
    rewards, eps = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0]), 1e-4
    group = grpo.group_advantages(rewards, k=3, scale="group", eps=eps)
    assert group.tolist() == pytest.approx([-1 / (1 + eps), 0, 1 / (1 + eps), 0, 0, 0])  # a flat group gets 0
    batch_std = math.sqrt((0 + 1 + 4 + 1 + 1 + 1) / 5)  # unbiased std of all six rewards (mean 1)
    batch = grpo.group_advantages(rewards, k=3, scale="batch", eps=eps)
    assert batch.tolist() == pytest.approx([x / (batch_std + eps) for x in (-1, 0, 1, 0, 0, 0)])
    assert grpo.group_advantages(rewards, k=3, scale="none").tolist() == [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="k >= 2"):
        grpo.group_advantages(rewards, k=1)


def test_grpo_token_loss_clips_each_side_with_its_own_epsilon_and_adds_k3():
    old = torch.zeros(2, 1)
    new = torch.tensor([[0.3], [-0.3]])
    loss = grpo.token_losses(new, old, None, torch.tensor([1.0, -1.0]), eps_low=0.2, eps_high=0.28, beta=0.0)
    assert loss[:, 0].tolist() == pytest.approx([-1.28, 0.8])  # e^0.3 = 1.35 → 1.28; e^−0.3 = 0.74 → 0.8
    same = torch.tensor([[-1.0], [-2.0]])
    with_kl = grpo.token_losses(same, same, same - 0.5, torch.tensor([1.0, 1.0]), 0.2, 0.2, beta=0.1)
    k3 = math.exp(-0.5) + 0.5 - 1  # exp(ref − logπ) − (ref − logπ) − 1 at ref − logπ = −0.5
    assert with_kl[:, 0].tolist() == pytest.approx([-1 + 0.1 * k3] * 2)


def test_grpo_aggregations_differ_as_defined():
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]])  # the 7s are padding
    assert grpo.aggregate(losses, MASK, "grpo").item() == pytest.approx((6 / 3 + 11 / 2) / 2)
    assert grpo.aggregate(losses, MASK, "bnpo").item() == pytest.approx(17 / 5)
    assert grpo.aggregate(losses, MASK, "dr_grpo", max_tokens=4).item() == pytest.approx(17 / (2 * 4))
    assert grpo.aggregate(losses, MASK, "dapo", batch_tokens=10).item() == pytest.approx(17 / 10)
    with pytest.raises(ValueError, match="loss_type"):
        grpo.aggregate(losses, MASK, "mean")


def test_dpo_at_the_reference_is_log_2_and_falls_as_the_chosen_response_gains():
    zero = torch.zeros(4)
    assert dpo.dpo_loss(dpo.preference_margin(zero, zero, zero, zero), beta=0.1).item() == pytest.approx(math.log(2))
    chosen = torch.zeros(1, requires_grad=True)
    loss = dpo.dpo_loss(dpo.preference_margin(chosen, torch.zeros(1), torch.zeros(1), torch.zeros(1)), beta=0.1)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.1 * 0.5)  # −β σ(−βh) at h = 0: raising log π(y_w) lowers it
    # h = 2, β = 0.1: −log σ(0.2) = log(1 + e^−0.2)
    assert dpo.dpo_loss(torch.tensor([2.0]), 0.1).item() == pytest.approx(math.log1p(math.exp(-0.2)))


def test_ipo_regresses_the_mean_token_margin_to_one_over_two_beta():
    token_logprobs = torch.tensor([[-1.0, -3.0, -2.0], [-2.0, -2.0, -50.0]])  # the -50 is padding
    assert dpo.sequence_logprob(token_logprobs, MASK, average=True).tolist() == pytest.approx([-2.0, -2.0])
    assert dpo.sequence_logprob(token_logprobs, MASK).tolist() == pytest.approx([-6.0, -4.0])
    assert dpo.ipo_loss(torch.tensor([0.0]), beta=0.1).item() == pytest.approx(25.0)  # (0 − 1/0.2)²
    assert dpo.ipo_loss(torch.tensor([5.0]), beta=0.1).item() == pytest.approx(0.0)
    assert dpo.implicit_reward_accuracy(torch.tensor([1.0, -1.0, 2.0, 0.0])).item() == 0.5
