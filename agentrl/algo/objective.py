"""The RL objective of a training step: policy loss + KL to a reference - entropy bonus, and the value loss.

Both trainers (torch and Megatron) call :func:`rl_objective` on each micro-batch and backpropagate
what it returns; they keep only what is backend-specific (forward passes, the split into
micro-batches and ranks, the optimiser). Formula, per micro-batch, with ``agg`` =
:func:`agentrl.algo.aggregate` in ``config.policy.aggregation`` over the step's **global**
denominator ``D``::

    loss = policy_loss(logp, logp_old, A; clip, TIS)                  # PPO / GSPO / CISPO (agentrl.algo.losses)
         + kl_loss_coef * agg(kl(logp, logp_ref), D)                  # Schulman 2020; GRPO arXiv 2402.03300 Eq. 3
         - entropy_coef * agg(H, D)                                   # entropy bonus, PPO arXiv 1707.06347 Eq. 9

Every term is divided by the same ``D``, so the sum of the micro-batch losses is the full-batch
loss and the accumulated gradient the full-batch gradient (see :mod:`agentrl.algo.aggregate`).

**Metrics are parts.** Each metric is this call's part of the step's value, so that adding the
parts of all micro-batches and ranks with :func:`merge_metric_parts` (``*_max`` / ``*_min`` keep
the extreme) gives the full-batch metric: ``loss``, ``pg_loss`` and ``kl_loss`` are divided by
``D`` already; token means (``entropy``, ``ppo_kl``, ``pg_clipfrac*``, ``ratio_mean``,
``rollout_train_*``, ``tis_*``) are weighted by this call's share of the step's loss tokens
(``num_tokens``), in float64; a call without loss tokens reports ``*_max`` / ``*_min`` as -inf /
+inf, so that it takes no part in the step's extremes. One call on the whole batch, without
``denominator`` and ``num_tokens``, returns the full-batch metrics themselves.

Example::

    >>> cfg = ObjectiveConfig(use_kl_loss=True, kl_loss_coef=0.5, kl_loss_type="k1", entropy_coef=0.1)
    >>> lp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    >>> loss, m = rl_objective(lp, torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1, 1, 0]]), config=cfg,
    ...                        ref_logprobs=torch.tensor([[-1.5, -2.5, 0.0]]),
    ...                        entropy=torch.tensor([[2.0, 1.0, 0.0]]))
    >>> round(loss.item(), 4)    # pg -1 (ratio 1, A 1) + 0.5 * k1 0.5 - 0.1 * entropy 1.5
    -0.9
    >>> sorted(m)[:4], m["kl_loss"].item(), m["entropy"].item()
    (['entropy', 'kl_loss', 'loss', 'pg_clipfrac'], 0.5, 1.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from agentrl.algo._names import check_name
from agentrl.algo.aggregate import aggregate, masked_mean
from agentrl.algo.kl import KL_ESTIMATORS, kl_penalty
from agentrl.algo.losses import PolicyLossConfig, value_loss
from agentrl.algo.registry import get_policy_loss


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the objective adds up and with which weights. Validated on construction."""

    policy_loss: str = "ppo"
    """Name in :data:`agentrl.algo.POLICY_LOSSES` (ppo | gspo | cispo)."""
    policy: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    """Clip ranges, aggregation (also of the KL, entropy and value terms), TIS."""
    use_kl_loss: bool = False
    """Add the KL to a reference model (then ``ref_logprobs`` is required)."""
    kl_loss_coef: float = 0.0
    """Weight of the KL term."""
    kl_loss_type: str = "low_var_kl"
    """k1 | k2 | k3 | low_var_kl (see :mod:`agentrl.algo.kl`)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss); the entropy is reported either way."""
    value_clip: float | None = 0.2
    """Clip range of the value loss (:func:`value_objective`); ``None`` for the plain squared error."""

    def __post_init__(self) -> None:
        get_policy_loss(self.policy_loss)
        check_name("KL estimator", self.kl_loss_type, KL_ESTIMATORS)
        if self.value_clip is not None and self.value_clip <= 0:
            raise ValueError(f"value_clip must be > 0 or None; got {self.value_clip}")

    @classmethod
    def from_train_config(cls, config: Any) -> "ObjectiveConfig":
        """The objective of a :class:`agentrl.train.TrainConfig` (any object with its loss fields).

        Example::

            >>> from agentrl.train import TrainConfig
            >>> ObjectiveConfig.from_train_config(TrainConfig(eps_clip_high=0.28)).policy.clip_high
            0.28
        """
        policy = PolicyLossConfig(
            eps_clip=config.eps_clip, eps_clip_high=config.eps_clip_high, eps_clip_c=config.eps_clip_c,
            aggregation=config.loss_aggregation, max_length_norm=config.max_length_norm,
            use_tis=config.use_tis, tis_cap=config.tis_cap)
        return cls(policy_loss=config.policy_loss, policy=policy, use_kl_loss=config.use_kl_loss,
                   kl_loss_coef=config.kl_loss_coef, kl_loss_type=config.kl_loss_type,
                   entropy_coef=config.entropy_coef, value_clip=config.value_clip)


def rl_objective(
    logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    config: ObjectiveConfig | None = None,
    old_logprobs: Tensor | None = None,
    rollout_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    denominator: float | Tensor | None = None,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to backpropagate for one micro-batch, and its metric parts (module docstring).

    Args:
        logprobs: ``[B, T]`` log-probabilities of the sampled tokens under the policy (with gradient).
        advantages: ``[B, T]`` (0 where ``loss_mask`` is 0).
        loss_mask: ``[B, T]``, 1 on the tokens that are trained on.
        config: the terms and their weights (defaults: :class:`ObjectiveConfig`).
        old_logprobs: ``[B, T]`` under the policy the advantages were computed for; ``None``
            means ``logprobs`` detached (the first step on a fresh rollout: ratio 1).
        rollout_logprobs: ``[B, T]`` the engine's; mismatch metrics, and TIS when ``config.policy.use_tis``.
        ref_logprobs: ``[B, T]`` under the reference model; required when ``config.use_kl_loss``.
        entropy: ``[B, T]`` per-token entropies; with gradient when ``config.entropy_coef`` is
            not 0 (required then), else only reported as ``entropy``.
        denominator: the step's global aggregation count (:func:`agentrl.algo.aggregation_denominator`
            summed over micro-batches and ranks); ``None`` uses this call's own.
        num_tokens: the step's loss tokens (``loss_mask`` summed over micro-batches and ranks),
            which weighs the token-mean metrics; ``None`` uses this call's own.

    Returns:
        ``(loss, metrics)``: a scalar, and detached 0-dim tensors: ``loss``, ``entropy`` (when
        ``entropy`` is given), ``kl_loss`` (with ``use_kl_loss``) and the policy loss's metrics
        (:mod:`agentrl.algo.losses`), each this call's part of the step's value.
    """
    config = config or ObjectiveConfig()
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    if config.use_kl_loss and ref_logprobs is None:
        raise ValueError("use_kl_loss=True needs ref_logprobs (the reference model's logprobs); got None")
    if config.entropy_coef and entropy is None:
        raise ValueError(f"entropy_coef={config.entropy_coef} needs the per-token entropy; got None")
    mode = config.policy.aggregation
    loss, policy_metrics = get_policy_loss(config.policy_loss)(
        logprobs, old_logprobs, advantages, loss_mask, config=config.policy,
        rollout_logprobs=rollout_logprobs, denominator=denominator)
    parts: dict[str, Tensor] = {}
    if config.use_kl_loss:
        assert ref_logprobs is not None  # checked above
        kl = kl_penalty(logprobs, ref_logprobs, config.kl_loss_type)  # [B, T]
        kl_loss = aggregate(kl, loss_mask, mode, max_length=config.policy.max_length_norm, denominator=denominator)
        loss = loss + config.kl_loss_coef * kl_loss
        parts["kl_loss"] = kl_loss.detach()
    if config.entropy_coef:
        assert entropy is not None  # checked above
        bonus = aggregate(entropy, loss_mask, mode, max_length=config.policy.max_length_norm, denominator=denominator)
        loss = loss - config.entropy_coef * bonus
    mine = loss_mask.sum(dtype=torch.float64)  # this call's loss tokens
    total = mine if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float64, device=mine.device)
    share = mine / total.clamp(min=1.0)
    parts["loss"] = loss.detach()
    if entropy is not None:
        parts["entropy"] = masked_mean(entropy.detach(), loss_mask) * share
    for key, value in policy_metrics.items():
        if key.endswith(("_max", "_min")):
            parts[key] = _extreme_part(key, value, mine, total)
        elif key == "pg_loss":  # divided by the global denominator already
            parts[key] = value
        else:
            parts[key] = value * share
    return loss, parts


def value_objective(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    loss_mask: Tensor,
    *,
    config: ObjectiveConfig | None = None,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The critic's loss for one micro-batch: :func:`agentrl.algo.value_loss` (clipped, PPO2;
    Engstrom et al. arXiv 2005.12729) with ``config.value_clip``, aggregated like the policy loss
    over the step's global ``denominator``.

    Args:
        values: ``[B, T]`` current critic predictions (with gradient).
        old_values: ``[B, T]`` predictions when the returns were computed.
        returns: ``[B, T]`` value targets.
        loss_mask: ``[B, T]``.

    Returns:
        ``(loss, {"value_loss": part})``; the parts add up to the full-batch value loss.

    Example::

        >>> v = torch.tensor([[1.0, 0.0]], requires_grad=True)
        >>> loss, m = value_objective(v, torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2),
        ...                           config=ObjectiveConfig(value_clip=0.5))
        >>> m["value_loss"]     # token 0: max(1^2, 0.5^2) / 2 = 0.5; token 1: 0 -> mean 0.25
        tensor(0.2500)
    """
    config = config or ObjectiveConfig()
    loss, _ = value_loss(values, old_values, returns, loss_mask, clip=config.value_clip,
                         aggregation=config.policy.aggregation, max_length=config.policy.max_length_norm,
                         denominator=denominator)
    return loss, {"value_loss": loss.detach()}


def _extreme_part(key: str, value: Tensor, mine: Tensor, total: Tensor) -> Tensor:
    """A call without loss tokens takes no part in the step's ``*_max`` / ``*_min`` (it gives the
    identity of the merge, -inf / +inf), unless no call of the step has any (then its own value)."""
    identity = value.new_tensor(-math.inf if key.endswith("_max") else math.inf)
    counts = ((mine > 0) | (total <= 0)).to(value.device)
    return torch.where(counts, value, identity)


def merge_metric_parts(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Add metric parts up over micro-batches and ranks: ``*_max`` the largest, ``*_min`` the
    smallest, the rest summed (each part is already its share of the full-batch value).

    Example::

        >>> merge_metric_parts([{"loss": 0.5, "ratio_max": 1.2}, {"loss": 0.25, "ratio_max": 1.1}])
        {'loss': 0.75, 'ratio_max': 1.2}
    """
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v
            elif k.endswith("_max"):
                out[k] = max(out[k], v)
            elif k.endswith("_min"):
                out[k] = min(out[k], v)
            else:
                out[k] += v
    return out


def mean_over_steps(steps: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Metrics of several optimiser steps on one rollout: ``*_max`` / ``*_min`` the extreme, the
    rest averaged over the steps (the keys of the first step).

    Example::

        >>> mean_over_steps([{"loss": 1.0, "ratio_min": 0.9}, {"loss": 2.0, "ratio_min": 0.8}])
        {'loss': 1.5, 'ratio_min': 0.8}
    """
    out: dict[str, float] = {}
    for key in steps[0]:
        values = [m[key] for m in steps]
        if key.endswith("_max"):
            out[key] = max(values)
        elif key.endswith("_min"):
            out[key] = min(values)
        else:
            out[key] = sum(values) / len(values)
    return out
