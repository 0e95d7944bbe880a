"""Per-turn data from samples to the batch to the estimators: turn index, rewards and state ids in
RolloutBatch.turns, micro-batch cuts, and what compute_advantages hands each estimator."""

import pytest
import torch

from agentrl import algo
from agentrl.components import compute_advantages
from agentrl.config import parse_args
from agentrl.train import RolloutBatch
from agentrl.types import Sample


def _episode(group, index, turn_rewards, keys, lengths=(2, 3), gap=2):
    """An episode of turns of ``lengths`` generated tokens, each followed by ``gap`` observation tokens."""
    ids, mask, starts = [], [], []
    for n in lengths[: len(turn_rewards)]:
        starts.append(len(ids))
        ids += [5] * n + [6] * gap
        mask += [1] * n + [0] * gap
    return Sample(prompt_ids=[1], response_ids=ids, loss_mask=mask, rollout_logprobs=[-1.0 if m else 0.0 for m in mask],
                  reward=sum(turn_rewards), group_id=group, sample_index=index, num_turns=len(turn_rewards),
                  turn_starts=starts, turn_rewards=list(turn_rewards), state_keys=list(keys))


def test_the_batch_carries_turns_right_aligned_and_micro_batches_cut_them():
    samples = [_episode(0, 0, [0.0, 1.0], ["a", "b"]), _episode(0, 1, [0.5], ["a"]),
               Sample(prompt_ids=[1], response_ids=[7, 8, 9], loss_mask=[1, 0, 1], rollout_logprobs=[-1.0, 0.0, -1.0],
                      reward=2.0, group_id=1, num_turns=2)]  # recorded no turns: read off the mask
    batch = RolloutBatch.from_samples(samples)
    assert batch.width == 9
    assert batch.turns.index.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1],
                                          [-1, -1, -1, -1, -1, 0, 0, 0, 0],
                                          [-1, -1, -1, -1, -1, -1, 0, 0, 1]]
    assert batch.turns.rewards.tolist() == [[0.0, 1.0], [0.5, 0.0], [0.0, 2.0]]
    assert batch.turns.states.tolist() == [[0, 1], [0, -1], [-1, -1]]  # equal keys, equal ids
    small = batch.select([1, 2])
    assert small.width == 4 and small.turns.index.tolist() == [[0, 0, 0, 0], [-1, 0, 0, 1]]
    assert small.turns.rewards.tolist() == [[0.5, 0.0], [0.0, 2.0]] and small.turns.states.tolist() == [[0, -1], [-1, -1]]


@pytest.mark.parametrize("flags", [["--advantage-estimator", "gigpo", "--gamma", "0.5"],
                                   ["--advantage-estimator", "rloo", "--turn-baseline"],
                                   ["--advantage-estimator", "reinforce_plus_plus", "--gamma", "0.9"]])
def test_compute_advantages_hands_each_estimator_its_turn_inputs(flags):
    samples = [_episode(0, 0, [0.0, 1.0], ["a", "b"]), _episode(0, 1, [0.25, 0.0], ["a", "c"]),
               _episode(0, 2, [0.5], ["a"])]
    batch = RolloutBatch.from_samples(samples)
    cfg = parse_args(["--n-samples-per-prompt", "3", *flags])
    compute_advantages(batch, cfg)
    config = algo.AdvantageConfig(gamma=cfg.algo.gamma, turn_baseline=cfg.algo.turn_baseline)
    fn = algo.get_advantage_estimator(cfg.algo.advantage_estimator)
    if cfg.algo.advantage_estimator == "reinforce_plus_plus":  # per-turn rewards on each turn's last token
        expected = fn(batch.rewards, batch.group_ids, batch.loss_mask, config=config,
                      token_rewards=algo.turn_token_rewards(batch.turns, batch.loss_mask))
        episode_level = fn(batch.rewards, batch.group_ids, batch.loss_mask, config=config)
        assert not torch.allclose(expected, episode_level)  # episode 1's .25 came at its first turn, not its end
    else:
        expected = fn(batch.rewards, batch.group_ids, batch.loss_mask, config=config, turns=batch.turns)
    torch.testing.assert_close(batch.advantages, expected)
    generated = batch.loss_mask[0] > 0  # episode 0's two turns get different credit
    assert batch.advantages[0][generated & (batch.turns.index[0] == 0)][-1] != \
        batch.advantages[0][generated & (batch.turns.index[0] == 1)][-1]


def test_gae_gets_per_turn_rewards_for_its_returns_too():
    samples = [_episode(0, 0, [-1.0, 1.0], [None, None]), _episode(0, 1, [-1.0], [None])]
    batch = RolloutBatch.from_samples(samples)
    batch.values = torch.zeros_like(batch.loss_mask)
    compute_advantages(batch, parse_args(["--advantage-estimator", "gae"]))
    token_rewards = algo.turn_token_rewards(batch.turns, batch.loss_mask)
    _, returns = algo.compute_gae(token_rewards, batch.values, batch.loss_mask, 1.0, 1.0)
    torch.testing.assert_close(batch.returns, returns)
    # episode 0: the first turn's tokens see -1 + 1 = 0 ahead, the second turn's +1
    first = batch.returns[0][(batch.turns.index[0] == 0) & (batch.loss_mask[0] > 0)]
    second = batch.returns[0][(batch.turns.index[0] == 1) & (batch.loss_mask[0] > 0)]
    assert torch.all(first == 0.0) and torch.all(second == 1.0)
