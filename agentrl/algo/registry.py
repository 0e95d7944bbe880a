"""Registries of the algorithms by name, and look-ups that fail with the valid names.

The registries are plain dicts, so adding an estimator or a loss is one assignment::

    from agentrl.algo import ADVANTAGE_ESTIMATORS
    ADVANTAGE_ESTIMATORS["my_estimator"] = my_fn   # same signature as grpo

Example::

    >>> get_advantage_estimator("grpo").__name__
    'grpo'
    >>> get_policy_loss("ppo").__name__
    'ppo_clip_loss'
    >>> get_policy_loss("gpso")
    Traceback (most recent call last):
    ...
    ValueError: unknown policy loss 'gpso'; expected one of: cispo, gspo, ppo. Did you mean 'gspo'?
"""

from __future__ import annotations

from agentrl.algo import advantages, losses
from agentrl.algo._names import unknown_name_error
from agentrl.algo.advantages import AdvantageFn
from agentrl.algo.gigpo import gigpo
from agentrl.algo.losses import PolicyLossFn

ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": advantages.grpo,
    "dr_grpo": advantages.dr_grpo,
    "rloo": advantages.rloo,
    "reinforce_plus_plus": advantages.reinforce_plus_plus,
    "reinforce_plus_plus_baseline": advantages.reinforce_plus_plus_baseline,
    "gae": advantages.gae,
    "gigpo": gigpo,
}
"""Name -> ``fn(rewards [N], group_ids [N], loss_mask [N, T], *, config, values=None,
token_rewards=None, turns=None) -> [N, T]``."""

CRITIC_ESTIMATORS: frozenset[str] = frozenset({"gae"})
"""Estimators that need ``values=`` from a critic (the trainer then also trains a value head)."""

TURN_ESTIMATORS: frozenset[str] = frozenset({"gigpo"})
"""Estimators that need ``turns=`` (per-turn rewards and state ids, :class:`agentrl.algo.Turns`)."""

TURN_BASELINE_ESTIMATORS: frozenset[str] = frozenset({"grpo", "dr_grpo", "rloo"})
"""Estimators with a ``turn_baseline`` form (``AdvantageConfig.turn_baseline``; they then need ``turns=``)."""

POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "ppo": losses.ppo_clip_loss,
    "gspo": losses.gspo_loss,
    "cispo": losses.cispo_loss,
}
"""Name -> ``fn(logprobs, old_logprobs, advantages, loss_mask, *, config, rollout_logprobs=None,
entropy=None, denominator=None) -> (loss, metrics)``."""


def get_advantage_estimator(name: str) -> AdvantageFn:
    """The estimator registered as ``name``; ``ValueError`` listing valid names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        raise unknown_name_error("advantage estimator", name, ADVANTAGE_ESTIMATORS) from None


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered as ``name``; ``ValueError`` listing valid names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        raise unknown_name_error("policy loss", name, POLICY_LOSSES) from None
