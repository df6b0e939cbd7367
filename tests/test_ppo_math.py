"""PPO math against hand computations and naive reference loops."""

import math

import pytest
import torch

from rlhf_lab.algorithms import ppo as pm


def naive_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one episode at a time, over the real tokens only."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            total = 0.0
            for l in range(n - t):
                v_next = values[b, t + l + 1].item() if t + l + 1 < n else 0.0
                delta = rewards[b, t + l].item() + gamma * v_next - values[b, t + l].item()
                total += (gamma * lam) ** l * delta
            adv[b, t] = total
    return adv


def test_gae_matches_naive_loop_with_ragged_episodes():
    torch.manual_seed(0)
    rewards = torch.randn(3, 6, dtype=torch.float64)
    values = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    rewards = rewards * mask
    adv, ret = pm.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = naive_gae(rewards, values, mask, 0.9, 0.8)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, (expected + values) * mask)


def test_gae_with_lambda_one_gamma_one_is_monte_carlo():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1]])
    adv, ret = pm.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.9]]))


def test_policy_loss_clipping_on_hand_made_ratios():
    old = torch.zeros(1, 4)
    # ratios 0.5, 0.9, 1.1, 1.5 with ε = 0.2
    new = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    loss, stats = pm.policy_loss(new, old, adv, torch.ones(1, 4), clip_eps=0.2)
    # token-wise max(-A·ρ, -A·clip(ρ)): [-0.5, -0.9, 1.1, -1.2]
    assert loss.item() == pytest.approx((-0.5 - 0.9 + 1.1 - 1.2) / 4)
    assert stats["clipfrac"].item() == pytest.approx(1 / 4)  # only ρ=1.5 with A>0 is clipped


def test_policy_gradient_vanishes_outside_the_trust_region():
    new = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_()
    loss, _ = pm.policy_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2)
    loss.backward()
    assert new.grad.abs().max().item() == 0.0


def test_masked_tokens_do_not_count():
    new, old = torch.tensor([[0.3, 9.0]]), torch.zeros(1, 2)
    adv = torch.tensor([[1.0, 100.0]])
    loss, _ = pm.policy_loss(new, old, adv, torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-min(math.exp(0.3), 1.2))


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, stats = pm.value_loss(values, old, returns, torch.ones(1, 2), clip_value=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: 1 and 1 -> 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_kl_estimators_on_known_distributions():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    logits_p, logits_q = p.log()[None, None], q.log()[None, None]
    logp, logq = (pm.log_softmax_at_temperature(x) for x in (logits_p, logits_q))
    assert pm.kl_between(logp, logq).item() == pytest.approx(exact, rel=1e-5)
    # Monte Carlo: k1 and k3 are unbiased for KL(p||q) on samples from p; k3 is never negative.
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200000, replacement=True, generator=g)
    lp, lq = p.log()[x], q.log()[x]
    k1, k3 = pm.kl_k1(lp, lq), pm.kl_k3(lp, lq)
    assert k1.mean().item() == pytest.approx(exact, abs=0.01)
    assert k3.mean().item() == pytest.approx(exact, abs=0.01)
    assert (k3 >= 0).all() and k3.var() < k1.var()


def test_temperature_divides_logits_for_logprobs():
    logits = torch.tensor([[[2.0, 0.0]]])
    lp = pm.gather_tokens(pm.log_softmax_at_temperature(logits, temperature=2.0), torch.tensor([[0]]))
    assert lp.item() == pytest.approx(math.log(math.exp(1) / (math.exp(1) + 1)))


def test_per_token_rewards_penalise_every_token_and_score_the_last():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.5], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, non_score = pm.per_token_rewards(torch.tensor([3.0, 5.0]), logp, ref, mask, beta=0.1)
    expected = torch.tensor([[-0.1, 0.0, -0.05 + 3.0], [0.0, 0.1 + 5.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    assert non_score[1, 2] == 0


def test_masked_whiten_uses_only_real_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = pm.masked_whiten(x, mask)
    torch.testing.assert_close(w, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4, rtol=1e-4)
    kept = pm.masked_whiten(x, mask, shift_mean=False)
    assert kept[0, 1].item() == pytest.approx(2.0, abs=1e-4)


def test_adaptive_kl_controller_update():
    ctl = pm.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=100)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl.update(current_kl=5.4, n_steps=1000)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * 1.002 * (1 - 0.1 * 0.1))
    fixed = pm.FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    assert pm.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert pm.explained_variance(torch.zeros(1, 3) + 2.0, returns, mask) == pytest.approx(0.0)


def test_fused_gelu_is_the_same_function():
    from transformers.activations import NewGELUActivation

    from rlhf_lab.models.loading import fuse_tanh_gelu

    x = torch.linspace(-6, 6, 1001)
    holder = torch.nn.Sequential(NewGELUActivation())
    expected = holder(x)
    fuse_tanh_gelu(holder)
    assert isinstance(holder[0], torch.nn.GELU)
    torch.testing.assert_close(holder(x), expected, atol=1e-6, rtol=1e-6)


def test_non_finite_loss_stops_with_a_clear_error():
    from rlhf_lab.engine.sft_module import NonFiniteLossError, check_finite

    check_finite(torch.tensor(1.0), "here")
    with pytest.raises(NonFiniteLossError, match="ppo iteration 7: loss is nan; lower the learning rate"):
        check_finite(torch.tensor(float("nan")), "ppo iteration 7")


def test_entropy_of_uniform_and_one_hot_distributions():
    uniform = pm.log_softmax_at_temperature(torch.zeros(1, 2, 8))
    assert pm.entropy_from_logprobs(uniform)[0].tolist() == pytest.approx([math.log(8)] * 2)
    peaked = pm.log_softmax_at_temperature(torch.tensor([[[0.0, 200.0, 0.0]]]))
    assert pm.entropy_from_logprobs(peaked).item() == pytest.approx(0.0, abs=1e-6)
    # temperature 2 on logits 2·z is the distribution of z
    z = torch.randn(3, 5)
    torch.testing.assert_close(pm.log_softmax_at_temperature(2 * z, 2.0), torch.log_softmax(z, -1))
