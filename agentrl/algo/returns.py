"""Token-level rewards and returns: reward placement, discounted returns, GAE, whitening.

The token-level half of the advantage estimators (``agentrl.algo.advantages`` holds the
estimators themselves). Shapes are ``[N, T]`` with ``loss_mask`` 1 on generated tokens.

Multi-turn: the tokens where ``loss_mask`` is 0 (tool results, user turns, template tokens) are
not actions. The recursions here skip them: the "next" token of an action is the next token
with mask 1, and discounting counts only those, so an outcome reward at the end of the last
turn flows back to every earlier turn.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_float(t: Tensor) -> Tensor:
    """float64 stays float64; everything else becomes float32."""
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def _turn_ends(loss_mask: Tensor) -> Tensor:
    """``[N, T]`` bool: True at the last token of each maximal run of mask-1 tokens (one turn)."""
    m = loss_mask.bool()
    nxt = torch.zeros_like(m)
    nxt[:, :-1] = m[:, 1:]
    return m & ~nxt



def place_rewards_at_turn_ends(rewards: Tensor, loss_mask: Tensor) -> Tensor:
    """Token rewards ``[N, T]`` from episode or per-turn rewards, on the last token of a turn.

    A turn is a maximal run of consecutive mask-1 tokens (the model's output between two
    observations). ``rewards`` ``[N]`` puts each episode's reward on the last mask-1 token of
    its final turn (the outcome reward). ``rewards`` ``[N, K]`` puts column ``k`` on the last
    token of turn ``k`` (per-turn rewards); rows with fewer than ``K`` turns must hold 0 in the
    extra columns. A nonzero reward with no token to carry it is a ``ValueError``.

    Example::

        >>> mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0]])  # two assistant turns, then padding
        >>> place_rewards_at_turn_ends(torch.tensor([2.0]), mask)
        tensor([[0., 0., 0., 0., 0., 2., 0.]])
        >>> place_rewards_at_turn_ends(torch.tensor([[0.5, 2.0]]), mask)
        tensor([[0.0000, 0.5000, 0.0000, 0.0000, 0.0000, 2.0000, 0.0000]])
    """
    rewards = as_float(rewards)
    if loss_mask.dim() != 2 or rewards.dim() not in (1, 2) or rewards.shape[0] != loss_mask.shape[0]:
        raise ValueError(
            f"expected rewards [N] or [N, K] and loss_mask [N, T]; got {tuple(rewards.shape)} "
            f"and {tuple(loss_mask.shape)}"
        )
    ends = _turn_ends(loss_mask)  # [N, T]
    out = torch.zeros(loss_mask.shape, dtype=rewards.dtype, device=rewards.device)
    if rewards.dim() == 1:
        has_turn = ends.any(-1)
        if (~has_turn & (rewards != 0)).any():
            raise ValueError("an episode with a nonzero reward has no token with loss_mask 1")
        # index of the last True per row (argmax of position * is_end)
        positions = torch.arange(loss_mask.shape[1], device=loss_mask.device)
        last = (ends * positions).argmax(-1)  # [N]
        rows = torch.arange(loss_mask.shape[0], device=loss_mask.device)
        out[rows[has_turn], last[has_turn]] = rewards[has_turn]
        return out
    turn_index = ends.long().cumsum(-1) - 1  # [N, T]: k at the end of turn k
    num_turns = ends.sum(-1)  # [N]
    k = torch.arange(rewards.shape[1], device=rewards.device)
    if ((k.unsqueeze(0) >= num_turns.unsqueeze(1)) & (rewards != 0)).any():
        raise ValueError("a nonzero per-turn reward is given for a turn the episode does not have")
    gathered = rewards.gather(1, turn_index.clamp(0, rewards.shape[1] - 1))  # [N, T]
    valid = ends & (turn_index < rewards.shape[1])
    return torch.where(valid, gathered, out)



def check_token_rewards(token_rewards: Tensor, loss_mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``token_rewards`` is ``[N, T]`` like ``loss_mask`` and 0 where it is 0."""
    if token_rewards.shape != loss_mask.shape:
        raise ValueError(
            f"token_rewards must be [N, T] like loss_mask {tuple(loss_mask.shape)}; got {tuple(token_rewards.shape)}"
        )
    if (token_rewards[~loss_mask.bool()] != 0).any():
        raise ValueError(
            "token_rewards must be 0 where loss_mask is 0 (rewards go on generated tokens; "
            "see place_rewards_at_turn_ends)"
        )



def discounted_returns(token_rewards: Tensor, loss_mask: Tensor, gamma: float) -> Tensor:
    """Discounted return-to-go over generated tokens (REINFORCE, Williams 1992; arXiv 2501.03262).

    Formula: ``G_t = r_t + gamma * G_next`` where ``next`` is the next mask-1 token of the
    episode; mask-0 tokens are skipped and get 0.

    Shapes: ``token_rewards [N, T]`` (0 where ``loss_mask`` is 0), ``loss_mask [N, T]`` -> ``[N, T]``.

    Example::

        >>> discounted_returns(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1, 0, 1]]), gamma=0.5)
        tensor([[0.5000, 0.0000, 1.0000]])
    """
    m = loss_mask.to(token_rewards.dtype)
    returns = torch.zeros_like(token_rewards)
    running = token_rewards.new_zeros(token_rewards.shape[0])  # [N]
    for t in reversed(range(token_rewards.shape[1])):
        # at a mask-0 token the running return passes through unchanged
        running = m[:, t] * (token_rewards[:, t] + gamma * running) + (1 - m[:, t]) * running
        returns[:, t] = torch.where(m[:, t] > 0, running, torch.zeros_like(running))
    return returns


def compute_gae(
    token_rewards: Tensor, values: Tensor, loss_mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., arXiv 1506.02438, Eq. 16) over tokens.

    Formula, over the mask-1 tokens of an episode in order (``t+1`` is the *next mask-1* token;
    ``V = 0`` after the last one)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                                   # the value target

    Args:
        token_rewards: ``[N, T]``, 0 where ``loss_mask`` is 0.
        values: ``[N, T]`` critic values (read only where ``loss_mask`` is 1; no gradient flows).
        loss_mask: ``[N, T]``.
        gamma, lam: discount and GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``[N, T]`` and 0 where ``loss_mask`` is 0, unwhitened.

    Example::

        >>> r = torch.tensor([[0.0, 0.0, 1.0]]); v = torch.tensor([[0.5, 9.0, 0.5]])
        >>> adv, ret = compute_gae(r, v, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=1.0)
        >>> adv, ret                     # token 1 is an observation: skipped, its value unused
        (tensor([[0.5000, 0.0000, 0.5000]]), tensor([[1., 0., 1.]]))
    """
    if values.shape != loss_mask.shape:
        raise ValueError(f"values must be [N, T] like loss_mask {tuple(loss_mask.shape)}; got {tuple(values.shape)}")
    check_token_rewards(token_rewards, loss_mask)
    r, v = as_float(token_rewards), as_float(values.detach())
    m = loss_mask.to(r.dtype)
    adv = torch.zeros_like(r)
    next_value = r.new_zeros(r.shape[0])  # [N]
    next_adv = r.new_zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(m[:, t] > 0, a_t, torch.zeros_like(a_t))
        # a mask-0 token is transparent: what is "next" for the token before it stays the same
        next_value = m[:, t] * v[:, t] + (1 - m[:, t]) * next_value
        next_adv = m[:, t] * a_t + (1 - m[:, t]) * next_adv
    returns = torch.where(m > 0, adv + v, torch.zeros_like(adv))
    return adv, returns



def masked_whiten(x: Tensor, mask: Tensor, eps: float) -> Tensor:
    """Batch whitening: ``(x - mean) / (std + eps)`` with mean and unbiased std over mask-1 entries.

    Used by REINFORCE++ (arXiv 2501.03262) and PPO's advantage normalisation. Entries where
    ``mask`` is 0 become 0; if all mask-1 entries are equal the result is exactly 0.

    Example::

        >>> masked_whiten(torch.tensor([[1.0, 0.0, 7.0]]), torch.tensor([[1, 1, 0]]), eps=1e-12)
        tensor([[ 0.7071, -0.7071,  0.0000]])
    """
    m = mask.bool()
    n = m.sum()
    if n == 0:
        return torch.zeros_like(x)
    values = x[m]
    if values.max() == values.min():
        return torch.zeros_like(x)
    mean = values.mean()
    std = values.std() if n > 1 else values.new_tensor(0.0)
    return torch.where(m, (x - mean) / (std + eps), torch.zeros_like(x))
