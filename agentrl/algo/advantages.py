"""Advantage estimators: from episode rewards (and group ids) or token rewards and values.

Every estimator in :data:`agentrl.algo.ADVANTAGE_ESTIMATORS` has one signature::

    advantages = fn(rewards, group_ids, loss_mask, *, config, values=None, token_rewards=None, turns=None)

* ``rewards``: ``[N]`` one scalar reward per episode;
* ``group_ids``: ``[N]`` long, episodes with the same id answered the same prompt (any values,
  not necessarily contiguous or sorted);
* ``loss_mask``: ``[N, T]``, 1 on the tokens the model generated (every assistant turn);
* ``values``: ``[N, T]`` critic values (``gae`` only);
* ``token_rewards``: ``[N, T]`` per-token rewards, e.g. per-turn rewards or KL reward shaping
  (``gae`` and ``reinforce_plus_plus``); when ``None`` they are built from ``rewards`` with
  :func:`place_rewards_at_turn_ends`;
* ``turns``: :class:`~agentrl.algo.turns.Turns`, per-turn rewards, state ids and the turn of each
  token (``gigpo``; ``grpo``, ``dr_grpo`` and ``rloo`` with ``turn_baseline``).

The result is ``[N, T]``, zero wherever ``loss_mask`` is 0. Episode-level estimators broadcast
one number over all the model's tokens of the episode, across all its assistant turns.
Passing an input an estimator does not use is an error, not silently ignored.

**Turn-level baseline** (``AdvantageConfig.turn_baseline``, for ``grpo``, ``dr_grpo``, ``rloo``):
every turn ``k`` of episode ``i`` gets its own return ``G_ik = sum_{k' >= k} gamma^(k'-k) r_ik'``
(the rewards from that turn on), compared with the same turn's returns of the other episodes of
the group (an episode past its end has ``G = 0`` there)::

    rloo:     A_ik = G_ik - (1/(n-1)) sum_{j != i} G_jk           # unbiased (docs/training.md)
    dr_grpo:  A_ik = G_ik - (1/n) sum_j G_jk  = (n-1)/n * rloo's  # unbiased up to the constant (n-1)/n
    grpo:     A_ik = (G_ik - mean_k) / (std_k + eps)              # the std holds G_ik: GRPO's own bias

A turn at which the whole group has equal returns gets exactly 0. With one turn and ``gamma``
any value these are the episode-level estimators.

Multi-turn credit for the token-level estimators (``reinforce_plus_plus``, ``gae``): the
tokens where ``loss_mask`` is 0 are not actions and are skipped by the recursions (see
:mod:`agentrl.algo.returns`, which also holds :func:`compute_gae` and
:func:`place_rewards_at_turn_ends`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from agentrl.algo.turns import Turns, check_turns, per_token, turn_returns
from agentrl.algo.returns import (
    as_float,
    check_token_rewards,
    compute_gae,
    discounted_returns,
    masked_whiten,
    place_rewards_at_turn_ends,
)


@dataclass(frozen=True)
class AdvantageConfig:
    """Settings of the advantage estimators. Validated on construction."""

    normalize_std: bool = True
    """GRPO: divide by the group's standard deviation; False gives Dr. GRPO (arXiv 2503.20783).
    GiGPO: the same at both levels (False is the paper's "w/o std")."""
    gamma: float = 1.0
    """Discount per generated token (``gae``, ``reinforce_plus_plus``); per turn for ``gigpo`` (the
    paper uses 0.95) and ``turn_baseline``."""
    lam: float = 1.0
    """GAE's lambda (arXiv 1506.02438)."""
    eps: float = 1e-6
    """Added to standard deviations before dividing."""
    whiten_gae: bool = True
    """Whiten ``gae`` advantages over the batch's unmasked tokens (as PPO implementations do)."""
    turn_baseline: bool = False
    """``grpo``, ``dr_grpo``, ``rloo``: per-turn returns against the group's returns at the same
    turn (module doc) instead of one episode reward against the group's; needs ``turns``."""
    step_advantage_weight: float = 1.0
    """GiGPO's omega: the weight of the step-level (anchor-state) advantage."""

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1]; got {self.gamma}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam must be in [0, 1]; got {self.lam}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0; got {self.eps}")
        if self.step_advantage_weight < 0:
            raise ValueError(f"step_advantage_weight must be >= 0; got {self.step_advantage_weight}")


AdvantageFn = Callable[..., Tensor]


# ---------------------------------------------------------------------------------------------
# helpers


def _check_episode_inputs(rewards: Tensor, group_ids: Tensor, loss_mask: Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N] (one per episode); got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids must be [N] like rewards {tuple(rewards.shape)}; got {tuple(group_ids.shape)}")
    if loss_mask.dim() != 2 or loss_mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"loss_mask must be [N, T] with N={rewards.shape[0]}; got {tuple(loss_mask.shape)}")
    if not torch.isfinite(as_float(rewards)).all():
        raise ValueError("rewards must be finite; got NaN or inf")


def _reject_unused(name: str, **unused: object) -> None:
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise ValueError(f"advantage estimator {name!r} does not use {', '.join(given)}; got them")


def _no_turn_baseline(name: str, config: AdvantageConfig) -> None:
    if config.turn_baseline:
        raise ValueError(f"turn_baseline is for the group estimators grpo, dr_grpo and rloo; {name!r} takes per-turn "
                         "rewards as token_rewards (agentrl.algo.turn_token_rewards) instead")


def _broadcast(per_episode: Tensor, loss_mask: Tensor) -> Tensor:
    """``[N]`` -> ``[N, T]``: the episode's value on its mask-1 tokens, 0 elsewhere."""
    per_token = per_episode.unsqueeze(-1).expand(loss_mask.shape)
    return torch.where(loss_mask.bool(), per_token, torch.zeros_like(per_token))


def _group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-episode ``(group mean, group unbiased std, group size, group has spread)``, each shaped
    like ``rewards``: ``[N]``, or ``[N, K]`` for statistics of each column (turn) over the group."""
    unique_ids, inverse = torch.unique(group_ids, return_inverse=True)  # inverse: [N] in 0..G-1
    zeros = rewards.new_zeros((len(unique_ids), *rewards.shape[1:]))
    count = zeros.index_add(0, inverse, torch.ones_like(rewards))  # [G(, K)]
    mean = zeros.index_add(0, inverse, rewards) / count  # [G(, K)]
    sq_dev = (rewards - mean[inverse]).square()
    var = zeros.index_add(0, inverse, sq_dev) / (count - 1).clamp(min=1)  # Bessel-corrected
    index = inverse.view(-1, *[1] * (rewards.dim() - 1)).expand_as(rewards)
    high = zeros.scatter_reduce(0, index, rewards, "amax", include_self=False)
    low = zeros.scatter_reduce(0, index, rewards, "amin", include_self=False)
    spread = high > low  # an exact test: equal rewards give exactly 0, never eps-amplified noise
    return mean[inverse], var.sqrt()[inverse], count[inverse], spread[inverse]


def _turn_level(name: str, rewards: Tensor, group_ids: Tensor, loss_mask: Tensor, config: AdvantageConfig,
                turns: Turns | None) -> Tensor:
    """The ``turn_baseline`` form of ``grpo`` / ``dr_grpo`` / ``rloo`` (module doc), ``[N, T]``."""
    if turns is None:
        raise ValueError(f"advantage estimator {name!r} with turn_baseline needs turns= (agentrl.algo.Turns); got None")
    check_turns(turns, loss_mask)
    returns = turn_returns(turns.rewards, config.gamma).to(as_float(rewards).dtype)  # [N, K]
    mean, std, count, spread = _group_stats(returns, group_ids)  # each [N, K]
    if name == "rloo":
        adv = (returns - mean) * count / (count - 1).clamp(min=1)  # = G - mean of the others
        spread = spread & (count > 1)
    else:
        adv = returns - mean
        if name == "grpo" and config.normalize_std:
            adv = adv / (std + config.eps)
    adv = torch.where(spread, adv, torch.zeros_like(adv))
    return per_token(adv, turns, loss_mask)


def _check_turn_use(name: str, config: AdvantageConfig, turns: Turns | None) -> None:
    if turns is not None and not config.turn_baseline:
        raise ValueError(f"advantage estimator {name!r} uses turns only with turn_baseline=True; got turns")


# ---------------------------------------------------------------------------------------------
# episode-level estimators


def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """GRPO's group-relative advantage (DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2).

    Formula, for episode ``i`` in group ``g``::

        A_i = (r_i - mean_g(r)) / (std_g(r) + eps)     # normalize_std=True (GRPO)
        A_i =  r_i - mean_g(r)                          # normalize_std=False (Dr. GRPO, arXiv 2503.20783)

    ``std`` is the unbiased (Bessel-corrected) group standard deviation. A group whose
    rewards are all equal (including a group of one) gets exactly 0: no NaN, no eps noise.
    With ``config.turn_baseline``, per turn (module doc; needs ``turns``).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``loss_mask [N, T]`` -> ``[N, T]``.

    Example::

        >>> r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]); g = torch.tensor([0, 0, 0, 0, 1, 1])
        >>> grpo(r, g, torch.ones(6, 1))[:, 0]   # mean .5, std sqrt(1/3); group 1 has no spread
        tensor([ 0.8660, -0.8660, -0.8660,  0.8660,  0.0000,  0.0000])
    """
    config = config or AdvantageConfig()
    _reject_unused("grpo", values=values, token_rewards=token_rewards)
    _check_turn_use("grpo", config, turns)
    _check_episode_inputs(rewards, group_ids, loss_mask)
    if config.turn_baseline:
        return _turn_level("grpo" if config.normalize_std else "dr_grpo", rewards, group_ids, loss_mask, config, turns)
    r = as_float(rewards)
    mean, std, _, spread = _group_stats(r, group_ids)
    adv = r - mean
    if config.normalize_std:
        adv = adv / (std + config.eps)
    adv = torch.where(spread, adv, torch.zeros_like(adv))
    return _broadcast(adv, loss_mask)


def dr_grpo(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """Dr. GRPO (Liu et al., arXiv 2503.20783): ``A_i = r_i - mean_g(r)``, no std division.

    The same as :func:`grpo` with ``normalize_std=False`` whatever ``config`` says. Pair it with
    the ``seq_mean_token_sum_norm`` aggregation for the paper's full recipe.

    Example::

        >>> dr_grpo(torch.tensor([3.0, 1.0]), torch.tensor([0, 0]), torch.ones(2, 1))[:, 0]
        tensor([ 1., -1.])
    """
    config = config or AdvantageConfig()
    return grpo(
        rewards, group_ids, loss_mask, values=values, token_rewards=token_rewards, turns=turns,
        config=dataclasses.replace(config, normalize_std=False),
    )


def rloo(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al., arXiv 2402.14740, Eq. 6; Kool et al. 2019).

    Formula, for episode ``i`` in a group of ``n``::

        A_i = r_i - (1/(n-1)) sum_{j != i} r_j  =  n/(n-1) * (r_i - mean_g(r))

    A group of one has no baseline and gets 0. With ``config.turn_baseline``, per turn (module doc).

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``loss_mask [N, T]`` -> ``[N, T]``.

    Example::

        >>> rloo(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]), torch.ones(3, 1))[:, 0]
        tensor([ 1.0000, -0.5000, -0.5000])
    """
    config = config or AdvantageConfig()
    _reject_unused("rloo", values=values, token_rewards=token_rewards)
    _check_turn_use("rloo", config, turns)
    _check_episode_inputs(rewards, group_ids, loss_mask)
    if config.turn_baseline:
        return _turn_level("rloo", rewards, group_ids, loss_mask, config, turns)
    r = as_float(rewards)
    mean, _, count, spread = _group_stats(r, group_ids)
    adv = (r - mean) * count / (count - 1).clamp(min=1)
    adv = torch.where(spread & (count > 1), adv, torch.zeros_like(adv))
    return _broadcast(adv, loss_mask)


def reinforce_plus_plus(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262, Sec. 3): discounted returns, whitened over the batch.

    Formula::

        G_t = r_t + gamma * G_{t+1}                        # over the episode's mask-1 tokens
        A_t = (G_t - mean(G)) / (std(G) + eps)             # mean/std over all mask-1 tokens of the batch

    ``r_t`` is ``token_rewards`` (e.g. the outcome reward minus a per-token KL penalty, the
    paper's setup) or, by default, the episode reward on its last generated token. With
    ``gamma = 1`` and no shaping every token of episode ``i`` gets ``r_i`` before whitening;
    whitening is over tokens, so longer episodes weigh more in the mean (as in OpenRLHF and
    verl). ``group_ids`` is not used (REINFORCE++ has no group baseline).

    Example::

        >>> r = torch.tensor([1.0, 0.0]); mask = torch.tensor([[1, 1], [1, 1]])
        >>> reinforce_plus_plus(r, torch.tensor([0, 1]), mask)   # tokens 1,1,0,0: mean .5, std .577
        tensor([[ 0.8660,  0.8660],
                [-0.8660, -0.8660]])
    """
    config = config or AdvantageConfig()
    _reject_unused("reinforce_plus_plus", values=values, turns=turns)
    _no_turn_baseline("reinforce_plus_plus", config)
    _check_episode_inputs(rewards, group_ids, loss_mask)
    if token_rewards is None:
        token_rewards = place_rewards_at_turn_ends(rewards, loss_mask)
    check_token_rewards(token_rewards, loss_mask)
    returns = discounted_returns(as_float(token_rewards), loss_mask, config.gamma)
    return masked_whiten(returns, loss_mask, config.eps)


def reinforce_plus_plus_baseline(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262, v2+): group mean baseline, then batch whitening.

    Formula::

        a_i = r_i - mean_g(r)                               # per episode, within its group
        A_t = (a_i - mean(a)) / (std(a) + eps)              # mean/std over all mask-1 tokens

    Shapes: ``rewards [N]``, ``group_ids [N]``, ``loss_mask [N, T]`` -> ``[N, T]``.

    Example::

        >>> r = torch.tensor([1.0, 0.0, 2.0, 2.0]); g = torch.tensor([0, 0, 1, 1])
        >>> reinforce_plus_plus_baseline(r, g, torch.ones(4, 1))[:, 0]  # a = .5,-.5,0,0; std .408
        tensor([ 1.2247, -1.2247,  0.0000,  0.0000])
    """
    config = config or AdvantageConfig()
    _reject_unused("reinforce_plus_plus_baseline", values=values, token_rewards=token_rewards, turns=turns)
    _no_turn_baseline("reinforce_plus_plus_baseline", config)
    _check_episode_inputs(rewards, group_ids, loss_mask)
    r = as_float(rewards)
    mean, _, _, spread = _group_stats(r, group_ids)
    centred = torch.where(spread, r - mean, torch.zeros_like(r))
    return masked_whiten(_broadcast(centred, loss_mask), loss_mask, config.eps)


# ---------------------------------------------------------------------------------------------
# GAE (PPO with a critic)


def gae(
    rewards: Tensor,
    group_ids: Tensor,
    loss_mask: Tensor,
    *,
    config: AdvantageConfig | None = None,
    values: Tensor | None = None,
    token_rewards: Tensor | None = None,
    turns: Turns | None = None,
) -> Tensor:
    """PPO's advantages with a critic: :func:`compute_gae`, then batch whitening (``whiten_gae``).

    Rewards: ``token_rewards`` if given (per-turn rewards, KL shaping), else each episode's
    reward on the last generated token of its final assistant turn
    (:func:`place_rewards_at_turn_ends`). ``group_ids`` is not used. For the value targets call
    :func:`compute_gae` itself: ``returns`` must come from the unwhitened advantages.

    Shapes: ``rewards [N]``, ``loss_mask [N, T]``, ``values [N, T]`` -> ``[N, T]``.

    Example::

        >>> mask = torch.tensor([[1, 1], [1, 1]])
        >>> cfg = AdvantageConfig(whiten_gae=False)
        >>> gae(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), mask, values=torch.full((2, 2), 0.5), config=cfg)
        tensor([[ 0.5000,  0.5000],
                [-0.5000, -0.5000]])
    """
    config = config or AdvantageConfig()
    _reject_unused("gae", turns=turns)
    _no_turn_baseline("gae", config)
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values=[N, T] from a critic; got None")
    _check_episode_inputs(rewards, group_ids, loss_mask)
    if token_rewards is None:
        token_rewards = place_rewards_at_turn_ends(rewards, loss_mask)
    adv, _ = compute_gae(token_rewards, values, loss_mask, config.gamma, config.lam)
    return masked_whiten(adv, loss_mask, config.eps) if config.whiten_gae else adv
