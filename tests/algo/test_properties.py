"""Property tests (hypothesis): losses and advantages do not depend on padding or episode order."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl import algo
from agentrl.algo import AdvantageConfig, PolicyLossConfig

F64 = torch.float64
MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]


def _embed(x, rows, cols, row_index, col_offset, garbage):
    """Place ``x`` [b, t] at rows ``row_index`` and columns offset..offset+t of a garbage tensor."""
    out = garbage.clone()
    out[row_index, col_offset : col_offset + x.shape[1]] = x
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 5),
    t=st.integers(1, 6),
    pad_rows=st.integers(0, 2),
    pad_cols=st.integers(0, 3),
    mode=st.sampled_from(MODES),
    loss_name=st.sampled_from(["ppo", "gspo", "cispo"]),
    dual_clip=st.booleans(),
    use_tis=st.booleans(),
    data=st.data(),
)
def test_policy_loss_invariant_to_padding_and_episode_order(
    seed, b, t, pad_rows, pad_cols, mode, loss_name, dual_clip, use_tis, data
):
    gen = torch.Generator().manual_seed(seed)
    lp = -3 * torch.rand(b, t, generator=gen, dtype=F64)
    old = lp + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    rollout = old + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    adv = torch.randn(b, 1, generator=gen, dtype=F64) + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    mask = (torch.rand(b, t, generator=gen) > 0.3).long()
    cfg = PolicyLossConfig(
        aggregation=mode, max_length_norm=8, eps_clip_c=3.0 if dual_clip else None, use_tis=use_tis, eps_clip=0.1
    )
    fn = algo.get_policy_loss(loss_name)

    rows, cols = b + pad_rows, t + pad_cols
    perm = torch.tensor(data.draw(st.permutations(range(rows))))
    row_index = perm[:b]  # where original episode i lands in the padded, shuffled batch
    offset = data.draw(st.integers(0, pad_cols))  # left padding, right padding, or both

    def garbage():
        return 40 * torch.randn(rows, cols, generator=gen, dtype=F64)

    lp_big = _embed(lp, rows, cols, row_index, offset, garbage()).requires_grad_()
    mask_big = _embed(mask, rows, cols, row_index, offset, torch.zeros(rows, cols, dtype=torch.long))
    args_big = [_embed(x, rows, cols, row_index, offset, garbage()) for x in (old, adv, rollout)]

    lp_small = lp.clone().requires_grad_()
    loss_small, m_small = fn(lp_small, old, adv, mask, config=cfg, rollout_logprobs=rollout)
    loss_big, m_big = fn(lp_big, args_big[0], args_big[1], mask_big, config=cfg, rollout_logprobs=args_big[2])

    torch.testing.assert_close(loss_big, loss_small)
    assert m_big.keys() == m_small.keys()
    for key in m_small:
        torch.testing.assert_close(m_big[key], m_small[key], msg=key)
    loss_small.backward()
    loss_big.backward()
    torch.testing.assert_close(lp_big.grad[row_index, offset : offset + t], lp_small.grad)
    outside = torch.ones(rows, cols, dtype=torch.bool)
    outside[row_index, offset : offset + t] = False
    assert (lp_big.grad[outside] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    groups=st.integers(1, 3),
    group_size=st.integers(1, 4),
    t=st.integers(1, 5),
    pad_cols=st.integers(0, 2),
    name=st.sampled_from(sorted(algo.ADVANTAGE_ESTIMATORS) + ["grpo+turn", "dr_grpo+turn", "rloo+turn"]),
    data=st.data(),
)
def test_advantages_follow_their_episodes_under_shuffling_and_padding(seed, groups, group_size, t, pad_cols, name, data):
    gen = torch.Generator().manual_seed(seed)
    n = groups * group_size
    name, _, turn_level = name.partition("+")
    mask = (torch.rand(n, t, generator=gen) > 0.3).long()
    mask[:, 0] = 1  # every episode has a token to carry its reward
    turns = algo.Turns.from_loss_mask(mask, torch.zeros(n, dtype=F64))
    k = turns.rewards.shape[1]
    in_episode = torch.arange(k) <= turns.index.max(-1, keepdim=True).values  # [n, k]: turns the episode has
    turn_rewards = torch.randint(0, 3, (n, k), generator=gen).to(F64) * in_episode  # ties happen
    states = torch.where(in_episode, torch.randint(-1, 3, (n, k), generator=gen), -1)  # shared, unique and no keys
    turns = algo.Turns(index=turns.index, rewards=turn_rewards, states=states)
    rewards = turn_rewards.sum(-1)
    group_ids = torch.arange(groups).repeat_interleave(group_size) * 5 + 2
    values = torch.randn(n, t, generator=gen, dtype=F64)
    cfg = AdvantageConfig(gamma=data.draw(st.sampled_from([1.0, 0.9])), lam=0.95, turn_baseline=bool(turn_level))
    kwargs = {"values": values} if name in algo.CRITIC_ESTIMATORS else {}
    if name in algo.TURN_ESTIMATORS or turn_level:
        kwargs["turns"] = turns
    fn = algo.get_advantage_estimator(name)
    base = fn(rewards, group_ids, mask, config=cfg, **kwargs)
    assert torch.isfinite(base).all()
    assert (base[mask == 0] == 0).all()

    perm = torch.tensor(data.draw(st.permutations(range(n))))
    offset = data.draw(st.integers(0, pad_cols))
    big_mask = torch.zeros(n, t + pad_cols, dtype=torch.long)
    big_mask[:, offset : offset + t] = mask[perm]
    if "values" in kwargs:
        big_values = 9 * torch.randn(n, t + pad_cols, generator=gen, dtype=F64)
        big_values[:, offset : offset + t] = values[perm]
        kwargs["values"] = big_values
    if "turns" in kwargs:  # padding columns are in no turn; state ids are relabelled (only equality matters)
        big_index = torch.full((n, t + pad_cols), -1, dtype=torch.long)
        big_index[:, offset : offset + t] = turns.index[perm]
        relabel = torch.tensor([7, 3, 11])
        big_states = torch.where(states[perm] >= 0, relabel[states[perm].clamp(min=0)], -1)
        kwargs["turns"] = algo.Turns(index=big_index, rewards=turn_rewards[perm], states=big_states)
    shuffled = fn(rewards[perm], group_ids[perm], big_mask, config=cfg, **kwargs)
    torch.testing.assert_close(shuffled[:, offset : offset + t], base[perm])
    assert (shuffled[:, :offset] == 0).all() and (shuffled[:, offset + t :] == 0).all()
