"""GiGPO: group-in-group advantages for multi-turn agents (Feng et al. 2025, arXiv 2505.10978).

GRPO gives every turn of an episode the episode's advantage. GiGPO adds a step-level advantage
computed inside *anchor-state groups*: the turns, across the episodes of one group (one prompt,
one environment seed), that acted in the same state (equal ``info["state_key"]``). Turns taken
from the same state are compared by their discounted returns, so a move that wastes a turn, or
leads nowhere, scores below one that makes progress from the same place even when both episodes
end alike. No critic and no extra rollouts: the groups come from states the episodes share.

Formulas (paper Sec. 3.1-3.3, Eqs. 3-8), for episode ``i`` of group ``g`` with turn rewards
``r_ik``, state ``s_ik`` and episode reward ``R_i = sum_k r_ik``::

    A^E_i   = (R_i - mean_g(R)) / (std_g(R) + eps)                 # episode level, as GRPO
    G_ik    = sum_{k' >= k} gamma^(k'-k) r_ik'                      # discounted return of turn k
    S(s)    = { G_jk' : j in g, s_jk' = s }                         # anchor-state group of state s
    A^S_ik  = (G_ik - mean S(s_ik)) / (std S(s_ik) + eps)           # step level
    A_ik    = A^E_i + omega * A^S_ik                                # every generated token of turn k

``std`` is the unbiased group standard deviation (as :func:`~agentrl.algo.grpo`), dropped with
``normalize_std=False`` at both levels (the paper's "w/o std" variant). ``omega`` is
``config.step_advantage_weight`` (1 in the paper), ``gamma`` ``config.gamma`` (per turn; 0.95 in
the paper). A group (episode or anchor state) whose values are all equal, including a group of
one, gets exactly 0; a turn without a state key gets no step-level term.

Deviation from the authors' code (verl-agent): there a state visited once forms a group of one
whose step advantage is the raw return (mean 0, std 1 for singletons); here it is 0, the value of
the formula above, as for GRPO's groups of one. States are compared only within a group: keys need
to be unique per task, not across tasks.

Example::

    >>> from agentrl.algo.turns import Turns
    >>> # two episodes of one prompt, two turns each; both start in state 0, then 1 (i) or 2 (j)
    >>> turns = Turns(index=torch.tensor([[0, 1], [0, 1]]), rewards=torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
    ...               states=torch.tensor([[0, 1], [0, 2]]))
    >>> cfg = AdvantageConfig(normalize_std=False, gamma=0.5)
    >>> gigpo(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), torch.ones(2, 2), turns=turns, config=cfg)
    tensor([[ 0.7500,  0.5000],
            [-0.7500, -0.5000]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentrl.algo.advantages import (
    AdvantageConfig,
    _broadcast,
    _check_episode_inputs,
    _group_stats,
    _no_turn_baseline,
    _reject_unused,
)
from agentrl.algo.returns import as_float
from agentrl.algo.turns import Turns, check_turns, per_token, turn_returns


def gigpo(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """GiGPO's advantage: episode-level GRPO plus the anchor-state step level (module doc).

    Args:
        rewards: ``[N]`` episode rewards (the episode level).
        group_ids: ``[N]`` episodes with equal ids answered the same prompt with the same seed.
        loss_mask: ``[N, T]``.
        turns: :class:`~agentrl.algo.turns.Turns` with ``states`` (the step level); turns
            without a state id (``-1``) get the episode level only.
        config: ``normalize_std``, ``gamma`` (per turn), ``step_advantage_weight`` (omega), ``eps``.

    Returns:
        ``[N, T]``, 0 where ``loss_mask`` is 0.

    In the module example, episode ``i`` reached the goal at its second turn: the episode level is
    ``+-0.5`` for ``i`` / ``j``; the shared first state 0 compares the first turns' returns
    ``0.5 * 1`` and ``0``, giving ``+-0.25``; states 1 and 2 were visited once (0).
    """
    config = config or AdvantageConfig()
    _reject_unused("gigpo", values=values, token_rewards=token_rewards)
    _no_turn_baseline("gigpo", config)
    _check_episode_inputs(rewards, group_ids, loss_mask)
    if turns is None or turns.states is None:
        raise ValueError("advantage estimator 'gigpo' needs turns= (agentrl.algo.Turns) with states; got "
                         + ("None" if turns is None else "turns without states"))
    check_turns(turns, loss_mask)
    r = as_float(rewards)
    mean, std, _, spread = _group_stats(r, group_ids)
    episode = r - mean
    if config.normalize_std:
        episode = episode / (std + config.eps)
    episode = torch.where(spread, episode, torch.zeros_like(episode))  # [N]
    step = _step_advantages(turns, turns.states, group_ids, config).to(r.dtype)  # [N, K]
    return _broadcast(episode, loss_mask) + config.step_advantage_weight * per_token(step, turns, loss_mask)


def _step_advantages(turns: Turns, states: Tensor, group_ids: Tensor, config: AdvantageConfig) -> Tensor:
    """``A^S`` ``[N, K]``: each turn's return against its anchor-state group (0 without a state)."""
    returns = turn_returns(turns.rewards, config.gamma)  # [N, K]
    out = torch.zeros_like(returns)
    has_state = states >= 0  # [N, K]
    if not bool(has_state.any()):
        return out
    groups = group_ids.unsqueeze(-1).expand_as(states)[has_state]  # [M]
    pairs = torch.stack([groups.to(torch.long), states[has_state].to(torch.long)], dim=-1)  # [M, 2]
    _, anchor = torch.unique(pairs, dim=0, return_inverse=True)  # [M]: one id per (group, state)
    values = returns[has_state]
    mean, std, _, spread = _group_stats(values, anchor)
    step = values - mean
    if config.normalize_std:
        step = step / (std + config.eps)
    out[has_state] = torch.where(spread, step, torch.zeros_like(step))
    return out
