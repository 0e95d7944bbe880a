"""Aggregation modes by hand, and micro-batching with a global denominator."""

import pytest
import torch

from agentrl import algo
from agentrl.algo import PolicyLossConfig

T = torch.tensor
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def test_three_modes_by_hand():
    x = T([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    m = T([[1, 1, 1, 1], [1, 0, 0, 0]])
    # token_mean: 8 / 5 -- every token weighs the same (the long episode dominates)
    torch.testing.assert_close(algo.aggregate(x, m, "token_mean"), T(1.6))
    # seq_mean_token_mean: (4/4 + 4/1) / 2 -- every episode weighs the same
    torch.testing.assert_close(algo.aggregate(x, m, "seq_mean_token_mean"), T(2.5))
    # seq_mean_token_sum_norm: (4/L + 4/L) / 2 -- token sums over a constant L
    torch.testing.assert_close(algo.aggregate(x, m, "seq_mean_token_sum_norm", max_length=4), T(1.0))
    torch.testing.assert_close(algo.aggregate(x, m, "seq_mean_token_sum_norm", max_length=10), T(0.4))
    # without max_length, L is the padded width T = 4
    torch.testing.assert_close(algo.aggregate(x, m, "seq_mean_token_sum_norm"), T(1.0))


def test_modes_agree_when_all_episodes_have_the_full_length():
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    m = torch.ones(3, 5)
    values = [algo.aggregate(x, m, mode, max_length=5) for mode in MODES]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])


@pytest.mark.parametrize("mode", MODES)
def test_empty_rows_and_columns_do_not_count(mode):
    x = T([[2.0, 3.0], [5.0, 0.0]])
    m = T([[1, 1], [1, 0]])
    padded_x = torch.cat([torch.cat([x, torch.full((2, 2), float("nan"))], 1), torch.full((1, 4), 7.0)])
    padded_m = torch.cat([torch.cat([m, torch.zeros(2, 2)], 1), torch.zeros(1, 4)])
    torch.testing.assert_close(
        algo.aggregate(padded_x, padded_m, mode, max_length=6), algo.aggregate(x, m, mode, max_length=6)
    )


@pytest.mark.parametrize("mode", MODES)
def test_nothing_unmasked_gives_zero_not_nan(mode):
    assert algo.aggregate(torch.ones(2, 3), torch.zeros(2, 3), mode).item() == 0.0
    assert algo.masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_denominators():
    m = T([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert algo.aggregation_denominator(m, "token_mean").item() == 3
    assert algo.aggregation_denominator(m, "seq_mean_token_mean").item() == 2
    assert algo.aggregation_denominator(m, "seq_mean_token_sum_norm").item() == 2


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        algo.aggregate(torch.ones(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="Did you mean 'token_mean'"):
        algo.aggregate(torch.ones(1, 1), torch.ones(1, 1), "tokenmean")


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_with_global_denominator_equal_the_full_batch(mode):
    gen = torch.Generator().manual_seed(1)
    lp = -torch.rand(4, 6, generator=gen)
    old = lp + 0.2 * torch.randn(4, 6, generator=gen)
    adv = torch.randn(4, 1, generator=gen).expand(4, 6).contiguous()
    mask = (torch.rand(4, 6, generator=gen) > 0.3).float()
    mask[:, 0] = 1
    mask[1, 3:] = 0  # lengths differ, so a naive mean of micro-batch means is wrong
    mask[2, 1:] = 0
    cfg = PolicyLossConfig(aggregation=mode, max_length_norm=6)

    full_lp = lp.clone().requires_grad_()
    full, _ = algo.ppo_clip_loss(full_lp, old, adv, mask, config=cfg)
    full.backward()

    micro_lp = lp.clone().requires_grad_()
    parts = [slice(0, 1), slice(1, 2), slice(2, 4)]  # 6, 2, 4 tokens; 1, 1, 2 episodes
    denom = sum(algo.aggregation_denominator(mask[p], mode) for p in parts)
    total = 0.0
    naive = 0.0
    for p in parts:
        loss, _ = algo.ppo_clip_loss(micro_lp[p], old[p], adv[p], mask[p], config=cfg, denominator=denom)
        loss.backward()
        total = total + loss.detach()
        naive = naive + algo.ppo_clip_loss(lp[p], old[p], adv[p], mask[p], config=cfg)[0] / len(parts)
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(micro_lp.grad, full_lp.grad)
    assert not torch.allclose(naive, full.detach())  # the denominator matters


def test_micro_batches_with_global_denominator_for_the_kl_term():
    lp = -torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    ref = lp - 0.3
    mask = T([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    kl = algo.kl_penalty(lp, ref, "k3")
    full = algo.aggregate(kl, mask, "token_mean")
    denom = algo.aggregation_denominator(mask, "token_mean")
    parts = algo.aggregate(kl[:1], mask[:1], denominator=denom) + algo.aggregate(kl[1:], mask[1:], denominator=denom)
    torch.testing.assert_close(parts, full)
