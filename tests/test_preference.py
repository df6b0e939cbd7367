"""Bradley–Terry loss, the gold labeller, quality measures and ensemble objectives."""

import math

import numpy as np
import pytest
import torch

from rlhf_lab.algorithms.bradley_terry import (
    bradley_terry_loss,
    expected_calibration_error,
    label_pairs,
    normalisation,
    pairwise_accuracy,
    preference_log_loss,
    preference_probability,
)
from rlhf_lab.rewards.ensemble import aggregate, disagreement


def test_bradley_terry_loss_and_gradient_by_hand():
    rc = torch.tensor([2.0, 0.5], requires_grad=True)
    rr = torch.tensor([1.0, 1.5], requires_grad=True)
    loss = bradley_terry_loss(rc, rr)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (-math.log(sig(1.0)) - math.log(sig(-1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dr_c [-log σ(r_c - r_r)] / 2 = -(1 - σ(Δ)) / 2
    assert rc.grad.tolist() == pytest.approx([-(1 - sig(1.0)) / 2, -(1 - sig(-1.0)) / 2], rel=1e-6)
    assert rr.grad.tolist() == pytest.approx([(1 - sig(1.0)) / 2, (1 - sig(-1.0)) / 2], rel=1e-6)


def test_bradley_terry_gradient_matches_finite_difference():
    torch.manual_seed(0)
    rc, rr = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, 0.3), (rc.requires_grad_(), rr.requires_grad_()))


def test_margin_shifts_the_difference():
    rc, rr = torch.tensor([1.0]), torch.tensor([0.0])
    assert bradley_terry_loss(rc, rr, margin=1.0).item() == pytest.approx(math.log(2))


def test_label_smoothing_by_hand_and_its_optimum_is_a_finite_gap():
    rc, rr = torch.tensor([2.0]), torch.tensor([0.5])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    eps = 0.1
    expected = -(1 - eps) * math.log(sig(1.5)) - eps * math.log(sig(-1.5))
    assert bradley_terry_loss(rc, rr, label_smoothing=eps).item() == pytest.approx(expected, rel=1e-6)
    # The gradient in the gap vanishes where σ(Δ) = 1 − ε, i.e. Δ = log((1 − ε)/ε); plain BT has none.
    gap = torch.tensor([math.log(0.9 / 0.1)], requires_grad=True)
    bradley_terry_loss(gap, torch.zeros(1), label_smoothing=eps).backward()
    assert gap.grad.item() == pytest.approx(0.0, abs=1e-6)
    plain = torch.tensor([math.log(9.0)], requires_grad=True)
    bradley_terry_loss(plain, torch.zeros(1)).backward()
    assert plain.grad.item() == pytest.approx(-0.1, rel=1e-5)


def test_reward_centering_adds_eta_times_the_squared_sum_and_pulls_the_level_to_zero():
    rc, rr = torch.tensor([3.0, 1.0]), torch.tensor([2.0, -2.0])
    base = bradley_terry_loss(rc, rr).item()
    # sums 5 and −1: η · mean(25, 1) = 0.01 · 13
    assert bradley_terry_loss(rc, rr, center_coef=0.01).item() == pytest.approx(base + 0.13, rel=1e-6)
    # Shifting both rewards by c leaves BT unchanged and costs η(2c)² with centering.
    shifted = bradley_terry_loss(rc + 5, rr + 5, center_coef=0.01).item()
    assert bradley_terry_loss(rc + 5, rr + 5).item() == pytest.approx(base, rel=1e-6)
    assert shifted > bradley_terry_loss(rc, rr, center_coef=0.01).item()


def test_loss_is_finite_for_huge_gaps():
    assert torch.isfinite(bradley_terry_loss(torch.tensor([-1e4]), torch.tensor([1e4])))


def test_labeller_preference_rate_matches_bradley_terry():
    rng = np.random.default_rng(0)
    n, temperature = 40000, 0.5
    gap = 0.4
    a_pref, flipped = label_pairs(np.full(n, gap), np.zeros(n), temperature, 0.0, rng)
    p = 1 / (1 + math.exp(-gap / temperature))
    se = math.sqrt(p * (1 - p) / n)
    assert abs(a_pref.mean() - p) < 4 * se
    assert not flipped.any()


def test_labeller_flip_fraction_is_honoured_and_zero_temperature_is_deterministic():
    rng = np.random.default_rng(1)
    g_a, g_b = rng.normal(size=1000), rng.normal(size=1000)
    clean, _ = label_pairs(g_a, g_b, 0.0, 0.0, rng)
    assert np.array_equal(clean, g_a > g_b)
    noisy, flipped = label_pairs(g_a, g_b, 0.0, 0.25, rng)
    assert flipped.sum() == 250
    assert np.array_equal(noisy, (g_a > g_b) ^ flipped)


def test_preference_probability_ties_are_half():
    assert preference_probability(np.array([1.0]), np.array([1.0]), 0.0)[0] == 0.5


def test_accuracy_log_loss_and_ece_by_hand():
    r_a, r_b = np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 3.0])
    labels = np.array([True, True, False, False])
    assert pairwise_accuracy(r_a, r_b, labels) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    probs = np.array([0.9, 0.2])
    assert preference_log_loss(probs, np.array([True, True])) == pytest.approx(
        -(math.log(0.9) + math.log(0.2)) / 2
    )
    # Oriented confidences 0.9 (hit) and 0.8 (miss), separate bins: ECE = ½·0.1 + ½·0.8
    assert expected_calibration_error(probs, np.array([True, True]), bins=5) == pytest.approx(0.45)


def test_normalisation_gives_zero_mean_unit_std():
    scores = np.array([1.0, 2.0, 3.0, 6.0])
    gain, bias = normalisation(scores)
    z = gain * scores + bias
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)


def test_ensemble_objectives_on_hand_made_rewards():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # (K=3, B=2)
    assert aggregate(rewards, "single").tolist() == [1.0, 0.0]
    assert aggregate(rewards, "mean").tolist() == pytest.approx([2.0, 1.0])
    assert aggregate(rewards, "wco").tolist() == [1.0, 0.0]
    # population variance: [2/3, 2]
    assert aggregate(rewards, "uwo", lam=0.5).tolist() == pytest.approx([2.0 - 1 / 3, 1.0 - 1.0])
    assert disagreement(rewards).tolist() == pytest.approx([math.sqrt(2 / 3), math.sqrt(2)])
    with pytest.raises(ValueError, match="unknown ensemble objective"):
        aggregate(rewards, "median")


def test_warm_averages_float_weights_keeps_equal_buffers_and_refuses_other_architectures():
    from rlhf_lab.rewards.warm import average_weights

    a = {"w": torch.tensor([1.0, 3.0]), "mask": torch.tensor([True, False])}
    b = {"w": torch.tensor([3.0, -1.0]), "mask": torch.tensor([True, False])}
    avg = average_weights([a, b])
    assert avg["w"].tolist() == [2.0, 1.0] and torch.equal(avg["mask"], a["mask"])
    with pytest.raises(ValueError, match=r"member 1: w has shape \(3,\), member 0 \(2,\)"):
        average_weights([a, {"w": torch.zeros(3), "mask": a["mask"]}])
    with pytest.raises(ValueError, match="member 1 and member 0 differ in their weights"):
        average_weights([a, {"v": torch.zeros(2), "mask": a["mask"]}])
    with pytest.raises(ValueError, match="mask: a non-float tensor"):
        average_weights([a, {"w": b["w"], "mask": torch.tensor([False, False])}])
