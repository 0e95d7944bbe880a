"""Per-turn data of a batch of multi-turn episodes, and the returns and placements built on it.

A multi-turn episode is a sequence of assistant turns; the environment's ``step`` answers each
with a reward (and may name the state the turn acted in, ``info["state_key"]``). :class:`Turns`
holds that per-turn information next to the token tensors of a batch:

* ``index`` ``[N, T]`` long: the turn each token belongs to (``-1``: before the first turn, or
  padding). A turn spans its generated tokens (``loss_mask`` 1) and the observation tokens that
  follow them (mask 0), so estimators read it only where ``loss_mask`` is 1;
* ``rewards`` ``[N, K]``: the reward of turn ``k`` of each episode (0 past its last turn);
* ``states`` ``[N, K]`` long, optional: an id per state key (``-1``: no key, or no such turn);
  equal ids within a group mean "the agent was in the same state here" (GiGPO's anchor states).

``agentrl.train.RolloutBatch.from_samples`` builds it from the samples' ``turn_starts``,
``turn_rewards`` and ``state_keys`` (see :class:`agentrl.types.Sample`).

Example::

    >>> mask = torch.tensor([[1, 1, 0, 1, 0]])          # turn 0: tokens 0-2, turn 1: tokens 3-4
    >>> turns = Turns(index=torch.tensor([[0, 0, 0, 1, 1]]), rewards=torch.tensor([[0.5, 1.0]]))
    >>> turn_returns(turns.rewards, gamma=0.5)          # G_0 = 0.5 + 0.5 * 1.0
    tensor([[1., 1.]])
    >>> turn_token_rewards(turns, mask)                 # each turn's reward on its last generated token
    tensor([[0.0000, 0.5000, 0.0000, 1.0000, 0.0000]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agentrl.algo.returns import as_float


@dataclass(frozen=True)
class Turns:
    """Per-turn rewards, state ids and the turn of each token (module doc). Shapes checked on construction."""

    index: Tensor
    """``[N, T]`` long: turn of each token, ``-1`` outside every turn."""
    rewards: Tensor
    """``[N, K]``: reward of each turn, 0 past an episode's last turn."""
    states: Tensor | None = None
    """``[N, K]`` long: state id of each turn, ``-1`` for none."""

    def __post_init__(self) -> None:
        if self.index.dim() != 2 or self.rewards.dim() != 2 or self.index.shape[0] != self.rewards.shape[0]:
            raise ValueError(f"Turns needs index [N, T] and rewards [N, K]; got {tuple(self.index.shape)} and "
                             f"{tuple(self.rewards.shape)}")
        if self.index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Turns.index must be an integer tensor; got {self.index.dtype}")
        if self.index.numel() and (self.index.min() < -1 or self.index.max() >= self.rewards.shape[1]):
            raise ValueError(f"Turns.index must hold -1 or a turn in [0, {self.rewards.shape[1]}); got values in "
                             f"[{int(self.index.min())}, {int(self.index.max())}]")
        if self.states is not None and self.states.shape != self.rewards.shape:
            raise ValueError(f"Turns.states must be [N, K] like rewards {tuple(self.rewards.shape)}; "
                             f"got {tuple(self.states.shape)}")

    @classmethod
    def from_loss_mask(cls, loss_mask: Tensor, rewards: Tensor) -> "Turns":
        """Turns read off the mask (each maximal run of mask-1 tokens is one turn) with the episode
        reward ``rewards`` ``[N]`` on the last one, and no state ids: what an episode recorded
        without per-turn data amounts to.

        Example::

            >>> t = Turns.from_loss_mask(torch.tensor([[0, 1, 0, 1, 1]]), torch.tensor([2.0]))
            >>> t.index, t.rewards
            (tensor([[-1,  0,  0,  1,  1]]), tensor([[0., 2.]]))
        """
        m = loss_mask.bool()
        starts = m.clone()
        starts[:, 1:] &= ~m[:, :-1]
        index = starts.long().cumsum(-1) - 1  # [N, T]
        counts = starts.sum(-1)  # [N]
        width = max(1, int(counts.max())) if counts.numel() else 1
        out = torch.zeros(loss_mask.shape[0], width, dtype=as_float(rewards).dtype)
        rows = torch.nonzero(counts > 0).squeeze(-1)
        out[rows, counts[rows] - 1] = as_float(rewards)[rows]
        return cls(index=index, rewards=out)


def turn_returns(turn_rewards: Tensor, gamma: float = 1.0) -> Tensor:
    """Discounted return of each turn: ``G_k = r_k + gamma * G_{k+1}`` (``G`` = 0 past the last turn).

    The reward-to-go of REINFORCE (Williams 1992) counted in turns, as GiGPO's step returns
    (Feng et al. 2025, arXiv 2505.10978, Sec. 3.2). Shapes: ``[N, K]`` -> ``[N, K]``.

    Example::

        >>> turn_returns(torch.tensor([[0.0, -1.0, 2.0]]), gamma=0.5)   # 2; -1 + 1; 0 + 0
        tensor([[0., 0., 2.]])
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1]; got {gamma}")
    r = as_float(turn_rewards)
    out = torch.zeros_like(r)
    running = r.new_zeros(r.shape[0])
    for k in reversed(range(r.shape[1])):
        running = r[:, k] + gamma * running
        out[:, k] = running
    return out


def per_token(per_turn: Tensor, turns: Turns, loss_mask: Tensor) -> Tensor:
    """``[N, K]`` -> ``[N, T]``: each token gets its turn's value where ``loss_mask`` is 1 and the
    token is in a turn; 0 elsewhere.

    Example::

        >>> t = Turns(index=torch.tensor([[-1, 0, 0, 1]]), rewards=torch.zeros(1, 2))
        >>> per_token(torch.tensor([[3.0, 4.0]]), t, torch.tensor([[1, 1, 0, 1]]))
        tensor([[0., 3., 0., 4.]])
    """
    check_turns(turns, loss_mask)
    if per_turn.shape != turns.rewards.shape:
        raise ValueError(f"per-turn values must be [N, K] {tuple(turns.rewards.shape)}; got {tuple(per_turn.shape)}")
    inside = loss_mask.bool() & (turns.index >= 0)
    gathered = per_turn.gather(1, turns.index.clamp(min=0).long()) if per_turn.shape[1] else \
        per_turn.new_zeros(loss_mask.shape)
    return torch.where(inside, gathered, torch.zeros_like(gathered))


def turn_token_rewards(turns: Turns, loss_mask: Tensor) -> Tensor:
    """Token rewards ``[N, T]`` for the token-level estimators (``reinforce_plus_plus``, ``gae``):
    turn ``k``'s reward on the last generated token of turns ``<= k`` (its own last token, unless
    the turn has none, e.g. its tokens were masked out; a reward with no generated token before
    it credits nothing and is dropped).

    Example::

        >>> t = Turns(index=torch.tensor([[0, 0, 1, 1]]), rewards=torch.tensor([[1.0, 2.0]]))
        >>> turn_token_rewards(t, torch.tensor([[1, 0, 0, 0]]))   # turn 1 generated nothing trainable
        tensor([[3., 0., 0., 0.]])
    """
    check_turns(turns, loss_mask)
    rewards = as_float(turns.rewards)
    out = torch.zeros(loss_mask.shape, dtype=rewards.dtype, device=rewards.device)
    m = loss_mask.bool()
    positions = torch.arange(loss_mask.shape[1], device=loss_mask.device).expand(loss_mask.shape)
    rows = torch.arange(loss_mask.shape[0], device=loss_mask.device)
    for k in range(rewards.shape[1]):
        last = torch.where(m & (turns.index <= k) & (turns.index >= 0), positions, -1).max(-1).values  # [N]
        has = last >= 0
        out.index_put_((rows[has], last[has]), rewards[has, k], accumulate=True)
    return out


def check_turns(turns: Turns, loss_mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``turns.index`` is ``[N, T]`` like ``loss_mask``."""
    if not isinstance(turns, Turns):
        raise ValueError(f"turns must be an agentrl.algo.Turns; got {type(turns).__name__}")
    if turns.index.shape != loss_mask.shape:
        raise ValueError(f"turns.index must be [N, T] like loss_mask {tuple(loss_mask.shape)}; "
                         f"got {tuple(turns.index.shape)}")
