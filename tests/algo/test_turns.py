"""Turn-level credit against values worked out by hand: per-turn returns and placements, GiGPO, and
the turn baseline of grpo / dr_grpo / rloo, whose unbiasedness is checked by exact enumeration."""

import itertools
import math

import pytest
import torch

from agentrl import algo
from agentrl.algo import AdvantageConfig, Turns

T = torch.tensor
F64 = torch.float64


def _one_token_per_turn(turn_rewards, states=None, counts=None):
    """Turns, loss mask and episode rewards for episodes whose turns are one generated token each."""
    rewards = T(turn_rewards, dtype=F64)
    n, k = rewards.shape
    counts = counts or [k] * n
    index = torch.full((n, k), -1, dtype=torch.long)
    mask = torch.zeros(n, k, dtype=torch.long)
    for i, c in enumerate(counts):
        index[i, :c] = torch.arange(c)
        mask[i, :c] = 1
    turns = Turns(index=index, rewards=rewards, states=None if states is None else T(states))
    return turns, mask, rewards.sum(-1)


# ------------------------------------------------------------------------------------------ helpers


def test_turn_returns_by_hand():
    # gamma .5: G_2 = 4, G_1 = 2 + .5 * 4 = 4, G_0 = 1 + .5 * 4 = 3
    torch.testing.assert_close(algo.turn_returns(T([[1.0, 2.0, 4.0]]), 0.5), T([[3.0, 4.0, 4.0]]))
    torch.testing.assert_close(algo.turn_returns(T([[1.0, 2.0, 4.0]]), 1.0), T([[7.0, 6.0, 4.0]]))
    with pytest.raises(ValueError, match="gamma"):
        algo.turn_returns(T([[1.0]]), 1.5)


def test_turn_token_rewards_and_per_token_follow_the_turn_index():
    # turn 0: columns 1-3 (3 is its observation), turn 1: columns 4-5; column 0 is padding
    turns = Turns(index=T([[-1, 0, 0, 0, 1, 1]]), rewards=T([[0.5, 2.0]]))
    mask = T([[0, 1, 1, 0, 1, 0]])
    torch.testing.assert_close(algo.turn_token_rewards(turns, mask), T([[0.0, 0.0, 0.5, 0.0, 2.0, 0.0]]))
    from agentrl.algo.turns import per_token

    torch.testing.assert_close(per_token(T([[3.0, 4.0]]), turns, mask), T([[0.0, 3.0, 3.0, 0.0, 4.0, 0.0]]))


def test_turns_from_the_loss_mask_put_the_outcome_on_the_last_run():
    t = Turns.from_loss_mask(T([[1, 1, 0, 1], [0, 0, 0, 0]]), T([3.0, 0.0]))
    assert t.index.tolist() == [[0, 0, 0, 1], [-1, -1, -1, -1]]
    assert t.rewards.tolist() == [[0.0, 3.0], [0.0, 0.0]] and t.states is None


def test_turns_check_their_shapes():
    with pytest.raises(ValueError, match=r"index must hold -1 or a turn in \[0, 1\)"):
        Turns(index=T([[0, 1]]), rewards=T([[1.0]]))
    with pytest.raises(ValueError, match="states must be"):
        Turns(index=T([[0]]), rewards=T([[1.0]]), states=T([[0, 1]]))
    with pytest.raises(ValueError, match="integer tensor"):
        Turns(index=T([[0.0]]), rewards=T([[1.0]]))
    turns, mask, rewards = _one_token_per_turn([[1.0, 0.0]], states=[[0, 0]])
    with pytest.raises(ValueError, match="turns.index must be"):
        algo.gigpo(rewards, T([0]), torch.ones(1, 3), turns=turns)


# ------------------------------------------------------------------------------------------ GiGPO


def test_gigpo_by_hand():
    # three episodes of one prompt on a grid; states are positions. Turn rewards (gamma .5):
    #   e0: A -> B -> goal   rewards 0, 1        returns G = [.5, 1]
    #   e1: A -> A -> B      rewards 0, 0, 1     returns G = [.25, .5, 1]   (a wasted first turn)
    #   e2: A -> C           rewards 0, 0        returns G = [0, 0]
    turns, mask, rewards = _one_token_per_turn(
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
        states=[[0, 1, -1], [0, 0, 1], [0, 2, -1]], counts=[2, 3, 2])
    cfg = AdvantageConfig(normalize_std=False, gamma=0.5)
    adv = algo.gigpo(rewards, T([7, 7, 7]), mask, turns=turns, config=cfg)
    # episode level (no std): rewards 1, 1, 0, mean 2/3
    e = [1 / 3, 1 / 3, -2 / 3]
    # state A holds e0 t0 (.5), e1 t0 (.25), e1 t1 (.5), e2 t0 (0): mean .3125
    # state B holds e0 t1 (1), e1 t2 (1): no spread -> 0; state C is e2's alone -> 0
    a = 0.3125
    expected = T([[e[0] + 0.5 - a, e[0] + 0.0, 0.0],
                  [e[1] + 0.25 - a, e[1] + 0.5 - a, e[1] + 0.0],
                  [e[2] + 0.0 - a, e[2] + 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(adv, expected)
    # with std at both levels: episode std over (1, 1, 0) = sqrt(1/3); state A std over (.5, .25, .5, 0)
    std_e = math.sqrt(1 / 3)
    std_a = math.sqrt(((0.5 - a) ** 2 * 2 + (0.25 - a) ** 2 + a ** 2) / 3)
    adv = algo.gigpo(rewards, T([7, 7, 7]), mask, turns=turns, config=AdvantageConfig(gamma=0.5, eps=1e-12))
    torch.testing.assert_close(adv[1, :2], T([e[1] / std_e + (0.25 - a) / std_a, e[1] / std_e + (0.5 - a) / std_a],
                                             dtype=F64))
    # omega scales the step level only
    adv = algo.gigpo(rewards, T([7, 7, 7]), mask, turns=turns,
                     config=AdvantageConfig(normalize_std=False, gamma=0.5, step_advantage_weight=2.0))
    torch.testing.assert_close(adv[0, 0], T(e[0] + 2 * (0.5 - a), dtype=F64))


def test_gigpo_without_shared_states_is_grpo_and_groups_do_not_mix():
    # equal state ids in different groups are different anchors
    turns, mask, rewards = _one_token_per_turn([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
                                               states=[[0, 1], [2, 3], [0, 1], [2, 3]])
    g = T([0, 0, 1, 1])
    grpo = algo.grpo(rewards, g, mask)
    torch.testing.assert_close(algo.gigpo(rewards, g, mask, turns=turns), grpo)
    # no state keys at all: the episode level alone
    no_keys = Turns(index=turns.index, rewards=turns.rewards, states=torch.full_like(turns.states, -1))
    torch.testing.assert_close(algo.gigpo(rewards, g, mask, turns=no_keys), grpo)


def test_gigpo_needs_turns_with_states_and_rejects_what_it_does_not_use():
    turns, mask, rewards = _one_token_per_turn([[1.0], [0.0]])
    with pytest.raises(ValueError, match="needs turns="):
        algo.gigpo(rewards, T([0, 0]), mask)
    with pytest.raises(ValueError, match="turns without states"):
        algo.gigpo(rewards, T([0, 0]), mask, turns=turns)
    with pytest.raises(ValueError, match="does not use values"):
        algo.gigpo(rewards, T([0, 0]), mask, turns=turns, values=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="turn_baseline is for"):
        algo.gigpo(rewards, T([0, 0]), mask, turns=turns, config=AdvantageConfig(turn_baseline=True))


# ------------------------------------------------------------------------------------------ turn baseline


def test_turn_baseline_by_hand():
    # group of 3; e2 ended after one turn (its return is 0 past its end). gamma 1.
    #   returns G: e0 [1, 1], e1 [2, 0], e2 [0, 0]
    turns, mask, rewards = _one_token_per_turn([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], counts=[2, 2, 1])
    g = T([0, 0, 0])
    cfg = AdvantageConfig(turn_baseline=True, eps=1e-12)
    rloo = algo.rloo(rewards, g, mask, turns=turns, config=cfg)
    # turn 0: others' means e0 (2+0)/2=1, e1 (1+0)/2=.5, e2 (1+2)/2=1.5; turn 1: e0 0, e1 .5
    torch.testing.assert_close(rloo, T([[0.0, 1.0], [1.5, -0.5], [-1.5, 0.0]], dtype=F64))
    dr = algo.dr_grpo(rewards, g, mask, turns=turns, config=cfg)
    torch.testing.assert_close(dr, rloo * 2 / 3)  # (n-1)/n of rloo
    grpo = algo.grpo(rewards, g, mask, turns=turns, config=cfg)
    # turn 0: G 1, 2, 0: mean 1, std 1; turn 1: G 1, 0, 0: mean 1/3, std sqrt(1/3)
    s1 = math.sqrt(1 / 3)
    torch.testing.assert_close(grpo, T([[0.0, (2 / 3) / s1], [1.0, (-1 / 3) / s1], [-1.0, 0.0]], dtype=F64))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_turn_baseline_with_one_turn_is_the_episode_estimator(name):
    turns, mask, rewards = _one_token_per_turn([[1.0], [0.0], [0.0], [3.0], [2.0], [2.0]])
    g = T([0, 0, 0, 0, 1, 1])
    fn = algo.get_advantage_estimator(name)
    torch.testing.assert_close(fn(rewards, g, mask, turns=turns, config=AdvantageConfig(turn_baseline=True, gamma=0.9)),
                               fn(rewards, g, mask))


def test_turn_baseline_is_asked_for_explicitly():
    turns, mask, rewards = _one_token_per_turn([[1.0], [0.0]])
    with pytest.raises(ValueError, match="uses turns only with turn_baseline=True"):
        algo.grpo(rewards, T([0, 0]), mask, turns=turns)
    with pytest.raises(ValueError, match="needs turns="):
        algo.rloo(rewards, T([0, 0]), mask, config=AdvantageConfig(turn_baseline=True))
    for name in ("reinforce_plus_plus", "reinforce_plus_plus_baseline", "gae"):
        kwargs = {"values": torch.zeros(2, 1)} if name == "gae" else {}
        with pytest.raises(ValueError, match="turn_baseline is for the group estimators"):
            algo.get_advantage_estimator(name)(rewards, T([0, 0]), mask, config=AdvantageConfig(turn_baseline=True),
                                               **kwargs)


# A two-turn tabular problem, solved exactly. Turn 1 picks a1 in {0, 1} (logits theta[0:2]); a1 = 1 ends the
# episode with reward .3; a1 = 0 earns 0 and leads to turn 2, which picks a2 (logits theta[2:4]) for reward 1 or .2.
TRAJECTORIES = [((0, 0), (0.0, 1.0)), ((0, 1), (0.0, 0.2)), ((1,), (0.3,))]


def _logps(theta, actions):
    first = torch.log_softmax(theta[0:2], 0)[actions[0]]
    return [first] + ([torch.log_softmax(theta[2:4], 0)[actions[1]]] if len(actions) > 1 else [])


def _expected_gradient(theta, n, advantages_fn):
    """E over every joint outcome of a group of n episodes of (1/n) sum_i sum_t A_it grad log pi(a_it)."""
    surrogate = theta.new_zeros(())
    for outcome in itertools.product(TRAJECTORIES, repeat=n):
        logps = [_logps(theta, actions) for actions, _ in outcome]
        prob = math.exp(sum(lp.item() for lps in logps for lp in lps))
        turns, mask, rewards = _one_token_per_turn([list(r) + [0.0] * (2 - len(r)) for _, r in outcome],
                                                   counts=[len(a) for a, _ in outcome])
        adv = advantages_fn(rewards, torch.zeros(n, dtype=torch.long), mask, turns)
        for i, lps in enumerate(logps):
            for t, lp in enumerate(lps):
                surrogate = surrogate + prob * adv[i, t].item() * lp / n
    return torch.autograd.grad(surrogate, theta)[0]


def _true_gradient(theta):
    j = sum(math.prod(lp.exp() for lp in _logps(theta, actions)) * sum(r) for actions, r in TRAJECTORIES)
    return torch.autograd.grad(j, theta)[0]


def test_turn_baseline_is_unbiased_by_exact_enumeration():
    theta = T([0.3, -0.2, 0.5, 0.1], dtype=F64, requires_grad=True)
    n = 3
    true = _true_gradient(theta)
    cfg = AdvantageConfig(turn_baseline=True)
    rloo = _expected_gradient(theta, n, lambda r, g, m, t: algo.rloo(r, g, m, turns=t, config=cfg))
    torch.testing.assert_close(rloo, true, rtol=1e-10, atol=1e-12)
    dr = _expected_gradient(theta, n, lambda r, g, m, t: algo.dr_grpo(r, g, m, turns=t, config=cfg))
    torch.testing.assert_close(dr, true * (n - 1) / n, rtol=1e-10, atol=1e-12)

    # the obvious per-turn baseline, the mean of the episodes still running at that turn (the episode itself
    # included), weighs each turn by a different expected factor: biased, not even parallel to the gradient
    def still_running(r, g, m, t):
        returns = algo.turn_returns(t.rewards)
        running = (t.index.max(-1, keepdim=True).values >= torch.arange(returns.shape[1])).to(F64)
        mean = (returns * running).sum(0) / running.sum(0).clamp(min=1)
        return (returns - mean) * running

    naive = _expected_gradient(theta, n, still_running)
    cosine = torch.dot(naive, true) / (naive.norm() * true.norm())
    assert cosine < 1 - 1e-3
