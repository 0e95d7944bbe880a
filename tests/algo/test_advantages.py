"""Advantage estimators against values worked out by hand."""

import math

import pytest
import torch

from agentrl import algo
from agentrl.algo import AdvantageConfig

T = torch.tensor


def ones(n, t=1):
    return torch.ones(n, t)


# ------------------------------------------------------------------------------------------ GRPO


def test_grpo_by_hand():
    # rewards 1,0,0,1: mean .5, unbiased var = 4 * .25 / 3 = 1/3, std = .57735
    adv = algo.grpo(T([1.0, 0.0, 0.0, 1.0]), T([0, 0, 0, 0]), ones(4), config=AdvantageConfig(eps=1e-12))
    expected = 0.5 / math.sqrt(1 / 3)  # 0.866025
    torch.testing.assert_close(adv[:, 0], T([expected, -expected, -expected, expected]))


def test_grpo_groups_are_independent_and_ids_need_not_be_contiguous():
    r = T([2.0, 0.0, 10.0, 4.0])
    adv = algo.grpo(r, T([7, 3, 7, 3]), ones(4), config=AdvantageConfig(normalize_std=False))
    # group 7: {2, 10} mean 6 -> -4, +4; group 3: {0, 4} mean 2 -> -2, +2
    torch.testing.assert_close(adv[:, 0], T([-4.0, -2.0, 4.0, 2.0]))


def test_dr_grpo_is_grpo_without_std():
    r, g = T([3.0, 1.0, 1.0, 1.0]), T([0, 0, 0, 0])  # mean 1.5
    expected = T([1.5, -0.5, -0.5, -0.5])
    torch.testing.assert_close(algo.grpo(r, g, ones(4), config=AdvantageConfig(normalize_std=False))[:, 0], expected)
    # dr_grpo ignores normalize_std=True
    torch.testing.assert_close(algo.dr_grpo(r, g, ones(4), config=AdvantageConfig(normalize_std=True))[:, 0], expected)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline"])
def test_zero_variance_groups_give_exact_zero(estimator):
    # 0.1 is not exactly representable: a naive (r - mean) / (std + eps) gives eps-amplified noise
    r = T([0.1, 0.1, 0.1, 1.0, 1.0, 5.0])
    g = T([0, 0, 0, 1, 1, 2])  # group 2 has a single episode
    adv = algo.get_advantage_estimator(estimator)(r, g, ones(6, 3))
    assert torch.isfinite(adv).all()
    assert (adv == 0).all()


def test_grpo_mixed_zero_and_nonzero_groups():
    r = T([1.0, 1.0, 1.0, 0.0])
    adv = algo.grpo(r, T([0, 0, 1, 1]), ones(4), config=AdvantageConfig(eps=1e-12))
    # group 0 no spread -> 0; group 1 {1, 0}: mean .5, unbiased std sqrt(.5) -> +-.7071
    torch.testing.assert_close(adv[:, 0], T([0.0, 0.0, 0.5 / math.sqrt(0.5), -0.5 / math.sqrt(0.5)]))


def test_multi_turn_broadcast_over_loss_mask_only():
    # episode: prompt-free response = [turn 1 (2 tokens), observation (2), turn 2 (1), padding (1)]
    mask = T([[1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    adv = algo.grpo(T([1.0, 0.0]), T([0, 0]), mask, config=AdvantageConfig(normalize_std=False))
    torch.testing.assert_close(adv, T([[0.5, 0.5, 0, 0, 0.5, 0], [-0.5, 0, 0, 0, 0, 0]]))


# ------------------------------------------------------------------------------------------ RLOO


def test_rloo_by_hand():
    r = T([1.0, 0.0, 0.0, 2.0, 4.0])
    adv = algo.rloo(r, T([0, 0, 0, 1, 1]), ones(5))
    # group 0: 1 - (0+0)/2 = 1; 0 - (1+0)/2 = -.5 (twice); group 1: 2 - 4 = -2; 4 - 2 = 2
    torch.testing.assert_close(adv[:, 0], T([1.0, -0.5, -0.5, -2.0, 2.0]))


def test_rloo_equals_scaled_dr_grpo():
    r = torch.randn(8, generator=torch.Generator().manual_seed(0))
    g = T([0, 0, 0, 0, 1, 1, 1, 1])
    torch.testing.assert_close(algo.rloo(r, g, ones(8)), algo.dr_grpo(r, g, ones(8)) * 4 / 3)


# --------------------------------------------------------------------------------- REINFORCE++


def test_reinforce_plus_plus_whitens_over_tokens():
    mask = T([[1, 1, 1], [1, 0, 0]])
    adv = algo.reinforce_plus_plus(T([1.0, 0.0]), T([0, 1]), mask, config=AdvantageConfig(eps=1e-12))
    # token returns 1,1,1 | 0: mean .75, unbiased var (3 * .0625 + .5625) / 3 = .25, std .5
    torch.testing.assert_close(adv, T([[0.5, 0.5, 0.5], [-1.5, 0.0, 0.0]]))


def test_reinforce_plus_plus_discounts_over_generated_tokens_only():
    mask = T([[1, 0, 1], [1, 1, 0]])
    adv = algo.reinforce_plus_plus(
        T([1.0, 0.0]), T([0, 1]), mask, config=AdvantageConfig(gamma=0.5, eps=1e-12)
    )
    # row 0: reward on token 2; token 0 is one *generated* step earlier -> .5 (the observation
    # token 1 is skipped). Token returns .5, 1 | 0, 0: mean .375, unbiased std:
    values = [0.5, 1.0, 0.0, 0.0]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    w = [(v - mean) / std for v in values]
    torch.testing.assert_close(adv, T([[w[0], 0.0, w[1]], [w[2], w[3], 0.0]]))


def test_reinforce_plus_plus_with_kl_shaped_token_rewards():
    mask = T([[1, 1], [1, 1]])
    token_rewards = T([[-0.1, 0.9], [0.0, -0.2]])  # e.g. reward - beta * kl per token
    adv = algo.reinforce_plus_plus(T([0.0, 0.0]), T([0, 1]), mask, token_rewards=token_rewards,
                                   config=AdvantageConfig(eps=1e-12))
    returns = [0.8, 0.9, -0.2, -0.2]  # reverse cumulative sums, gamma 1
    mean = sum(returns) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in returns) / 3)
    torch.testing.assert_close(adv.flatten(), T([(v - mean) / std for v in returns]))


def test_reinforce_plus_plus_baseline_by_hand():
    r, g = T([1.0, 0.0, 2.0, 2.0]), T([0, 0, 1, 1])
    adv = algo.reinforce_plus_plus_baseline(r, g, ones(4), config=AdvantageConfig(eps=1e-12))
    # centred .5, -.5, 0, 0: mean 0, unbiased std sqrt(.5 / 3)
    s = 0.5 / math.sqrt(0.5 / 3)
    torch.testing.assert_close(adv[:, 0], T([s, -s, 0.0, 0.0]))


def test_token_rewards_on_masked_positions_are_rejected():
    with pytest.raises(ValueError, match="must be 0 where loss_mask is 0"):
        algo.reinforce_plus_plus(T([0.0]), T([0]), T([[1, 0]]), token_rewards=T([[0.0, 1.0]]))


# ------------------------------------------------------------------------------------------- GAE


def test_compute_gae_by_hand():
    r = T([[0.0, 0.0, 1.0]])
    v = T([[0.5, 0.5, 0.5]])
    adv, ret = algo.compute_gae(r, v, ones(1, 3), gamma=0.9, lam=0.8)
    # t2: delta = 1 - .5 = .5, A = .5
    # t1: delta = .9 * .5 - .5 = -.05, A = -.05 + .72 * .5 = .31
    # t0: delta = -.05, A = -.05 + .72 * .31 = .1732
    torch.testing.assert_close(adv, T([[0.1732, 0.31, 0.5]]))
    torch.testing.assert_close(ret, T([[0.6732, 0.81, 1.0]]))


def test_compute_gae_monte_carlo_limit():
    # gamma = lam = 1: A_t = (sum of future rewards) - V_t
    adv, ret = algo.compute_gae(T([[0.0, 2.0, 1.0]]), T([[1.0, 2.0, 3.0]]), ones(1, 3))
    torch.testing.assert_close(adv, T([[2.0, 1.0, -2.0]]))
    torch.testing.assert_close(ret, T([[3.0, 3.0, 1.0]]))


def test_compute_gae_skips_observation_tokens():
    mask = T([[1, 0, 0, 1, 0]])
    values = T([[0.2, 100.0, 100.0, 0.4, 100.0]])  # values at observations must not be used
    rewards = algo.place_rewards_at_turn_ends(T([1.0]), mask)
    adv, ret = algo.compute_gae(rewards, values, mask)
    # t3: delta = 1 - .4 = .6; t0: delta = 0 + .4 - .2 = .2, A = .2 + .6 = .8
    torch.testing.assert_close(adv, T([[0.8, 0.0, 0.0, 0.6, 0.0]]))
    torch.testing.assert_close(ret, T([[1.0, 0.0, 0.0, 1.0, 0.0]]))


def test_gae_estimator_whitens_and_needs_values():
    mask = T([[1, 1], [1, 1]])
    values = torch.full((2, 2), 0.5)
    raw = algo.gae(T([1.0, 0.0]), T([0, 1]), mask, values=values, config=AdvantageConfig(whiten_gae=False))
    torch.testing.assert_close(raw, T([[0.5, 0.5], [-0.5, -0.5]]))
    white = algo.gae(T([1.0, 0.0]), T([0, 1]), mask, values=values, config=AdvantageConfig(eps=1e-12))
    s = 0.5 / math.sqrt(1 / 3)  # tokens .5,.5,-.5,-.5: mean 0, unbiased std sqrt(1/3)
    torch.testing.assert_close(white, T([[s, s], [-s, -s]]))
    with pytest.raises(ValueError, match="needs values"):
        algo.gae(T([1.0]), T([0]), T([[1]]))


def test_estimators_reject_inputs_they_do_not_use():
    with pytest.raises(ValueError, match="'grpo' does not use values"):
        algo.grpo(T([1.0]), T([0]), T([[1]]), values=T([[0.0]]))
    with pytest.raises(ValueError, match="does not use token_rewards"):
        algo.rloo(T([1.0]), T([0]), T([[1]]), token_rewards=T([[0.0]]))


def test_input_validation():
    with pytest.raises(ValueError, match=r"rewards must be \[N\]"):
        algo.grpo(T([[1.0]]), T([0]), T([[1]]))
    with pytest.raises(ValueError, match="loss_mask must be"):
        algo.grpo(T([1.0, 2.0]), T([0, 0]), T([[1]]))
    with pytest.raises(ValueError, match="finite"):
        algo.grpo(T([float("nan")]), T([0]), T([[1]]))


# ------------------------------------------------------------------------------ reward placement


def test_place_rewards_outcome_and_per_turn():
    mask = T([[1, 1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    out = algo.place_rewards_at_turn_ends(T([2.0, 3.0, 0.0]), mask)
    expected = torch.zeros(3, 7)
    expected[0, 5], expected[1, 1] = 2.0, 3.0
    torch.testing.assert_close(out, expected)
    per_turn = algo.place_rewards_at_turn_ends(T([[0.5, 2.0], [3.0, 0.0], [0.0, 0.0]]), mask)
    expected[0, 1] = 0.5
    torch.testing.assert_close(per_turn, expected)


def test_place_rewards_errors():
    with pytest.raises(ValueError, match="no token with loss_mask 1"):
        algo.place_rewards_at_turn_ends(T([1.0]), T([[0, 0]]))
    with pytest.raises(ValueError, match="turn the episode does not have"):
        algo.place_rewards_at_turn_ends(T([[1.0, 1.0]]), T([[1, 1, 0]]))
