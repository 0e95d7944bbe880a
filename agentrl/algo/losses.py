"""Policy losses (PPO-clip with clip-higher and dual clip, GSPO, CISPO) and the PPO value loss.

Every policy loss has the same signature, so trainers select one by name from
:data:`agentrl.algo.POLICY_LOSSES`::

    loss, metrics = fn(logprobs, old_logprobs, advantages, loss_mask, config=cfg,
                       rollout_logprobs=None, entropy=None, denominator=None)

All token tensors are ``[B, T]``; tokens where ``loss_mask`` is 0 (prompt, observations,
padding) change neither the loss nor any gradient, whatever values they hold. The loss is a
scalar reduced with :func:`agentrl.algo.aggregate` (``cfg.aggregation``); metrics are detached
0-dim tensors (masked means over this call's tokens), named without a namespace:

``pg_loss``, ``pg_clipfrac`` (any clip active), ``pg_clipfrac_low`` (``A < 0``, ratio below
``1 - eps_clip``), ``pg_clipfrac_high`` (``A > 0``, ratio above ``1 + eps_clip_high``),
``pg_clipfrac_dual`` (``A < 0``, ratio above ``eps_clip_c``); for CISPO the fraction of tokens whose
importance weight was clipped (``_high``: above ``1 + eps_clip_high``; ``_low`` and ``_dual`` are 0);
``ppo_kl`` (``mean(old - new)``,
the k1 estimate of ``KL(pi_old || pi)``), ``ratio_mean``, ``ratio_max``, ``ratio_min``;
``entropy`` when per-token entropies are passed; ``rollout_train_abs_diff`` and
``rollout_train_kl`` when ``rollout_logprobs`` are passed; ``tis_weight_mean`` and
``tis_clipfrac`` when ``cfg.use_tis``.

The KL-to-reference term and the entropy bonus are not part of these losses: compute them with
:func:`agentrl.algo.kl_penalty` and :func:`agentrl.algo.entropy_from_logits`, aggregate with
the same mode and denominator, and add them with their coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from agentrl.algo.aggregate import aggregate, check_aggregation, masked_mean
from agentrl.algo.tis import rollout_mismatch_metrics, tis_weights


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of the policy losses. Validated on construction."""

    eps_clip: float = 0.2
    """Lower clip range: the ratio is clipped below at ``1 - eps_clip`` (PPO, arXiv 1707.06347)."""
    eps_clip_high: float | None = None
    """Upper clip range ``1 + eps_clip_high``; ``None`` means ``eps_clip``. DAPO's clip-higher
    (arXiv 2503.14476) uses 0.28 with ``eps_clip=0.2``."""
    eps_clip_c: float | None = None
    """Dual clip (Ye et al., arXiv 1912.09729): for ``A < 0`` the loss is capped at ``-c * A``;
    must be > 1 (3.0 is usual). ``None`` disables it."""
    aggregation: str = "token_mean"
    """token_mean | seq_mean_token_mean | seq_mean_token_sum_norm (see ``agentrl.algo.aggregate``)."""
    max_length_norm: float | None = None
    """The constant length ``L`` of seq_mean_token_sum_norm (Dr. GRPO); ``None`` uses ``T``."""
    use_tis: bool = False
    """Weight each token's loss by the truncated importance ratio rollout -> trainer (TIS)."""
    tis_cap: float = 2.0
    """``C`` in ``min(exp(logp_old - logp_rollout), C)``."""

    def __post_init__(self) -> None:
        if not 0 < self.eps_clip < 1:
            raise ValueError(f"eps_clip must be in (0, 1); got {self.eps_clip}")
        if self.eps_clip_high is not None and self.eps_clip_high <= 0:
            raise ValueError(f"eps_clip_high must be > 0 or None; got {self.eps_clip_high}")
        if self.eps_clip_c is not None and self.eps_clip_c <= 1:
            raise ValueError(f"eps_clip_c (dual clip) must be > 1 or None; got {self.eps_clip_c}")
        check_aggregation(self.aggregation)
        if self.max_length_norm is not None and self.max_length_norm <= 0:
            raise ValueError(f"max_length_norm must be > 0 or None; got {self.max_length_norm}")
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0; got {self.tis_cap}")

    @property
    def clip_high(self) -> float:
        """The effective upper clip range (``eps_clip_high``, else ``eps_clip``)."""
        return self.eps_clip if self.eps_clip_high is None else self.eps_clip_high


class PolicyLossFn(Protocol):
    """The signature shared by every entry of ``POLICY_LOSSES``."""

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        loss_mask: Tensor,
        *,
        config: PolicyLossConfig | None = None,
        rollout_logprobs: Tensor | None = None,
        entropy: Tensor | None = None,
        denominator: float | Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


def _check_shapes(**tensors: Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        got = ", ".join(f"{n}={s}" for n, s in shapes.items())
        raise ValueError(f"expected tensors of one shape [B, T]; got {got}")


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, config: PolicyLossConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO loss ``[B, T]`` and boolean masks of where each clip is active.

    ``loss = -A * r`` except: ``A > 0`` and ``r > 1 + eh`` -> ``-A (1 + eh)``; ``A < 0`` and
    ``r < 1 - el`` -> ``-A (1 - el)``; ``A < 0`` and ``r > c`` -> ``-A c`` (dual clip). Clipped
    tokens carry no gradient; at exactly a bound the unclipped branch (with its gradient) is
    used. This equals ``max(-A r, -A clip(r, 1 - el, 1 + eh))``, then ``min(., -A c)`` for
    ``A < 0`` (PPO arXiv 1707.06347 Eq. 7; dual clip arXiv 1912.09729 Eq. 5).
    """
    low, high = 1.0 - config.eps_clip, 1.0 + config.clip_high
    positive, negative = advantages > 0, advantages < 0
    clipped_high = positive & (ratio > high)
    clipped_low = negative & (ratio < low)
    surrogate_ratio = torch.where(clipped_high, high, torch.where(clipped_low, low, ratio))
    if config.eps_clip_c is not None:
        clipped_dual = negative & (ratio > config.eps_clip_c)
        surrogate_ratio = torch.where(clipped_dual, config.eps_clip_c, surrogate_ratio)
    else:
        clipped_dual = torch.zeros_like(positive)
    per_token = -advantages * surrogate_ratio
    return per_token, {"low": clipped_low, "high": clipped_high, "dual": clipped_dual}


def _finish(
    per_token: Tensor,
    clipped: dict[str, Tensor],
    ratio: Tensor,
    log_ratio: Tensor,
    advantages: Tensor,
    old_logprobs: Tensor,
    loss_mask: Tensor,
    config: PolicyLossConfig,
    rollout_logprobs: Tensor | None,
    entropy: Tensor | None,
    denominator: float | Tensor | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Apply TIS to the per-token loss, aggregate and collect the metrics (shared by every loss)."""
    mask = loss_mask.bool()
    metrics: dict[str, Tensor] = {}
    if rollout_logprobs is not None:
        if config.use_tis:
            weights, tis_metrics = tis_weights(old_logprobs, rollout_logprobs, loss_mask, config.tis_cap)
            per_token = per_token * weights
            metrics.update(tis_metrics)
        else:
            metrics.update(rollout_mismatch_metrics(old_logprobs, rollout_logprobs, loss_mask))
    elif config.use_tis:
        raise ValueError("use_tis=True needs rollout_logprobs (the engine's logprobs); got None")
    loss = aggregate(
        per_token, loss_mask, config.aggregation, max_length=config.max_length_norm, denominator=denominator
    )
    with torch.no_grad():
        any_clip = clipped["low"] | clipped["high"] | clipped["dual"]
        big = torch.finfo(ratio.dtype).max
        has_tokens = mask.any()  # stays a tensor: no host sync
        one = ratio.new_tensor(1.0)
        metrics.update(
            pg_loss=loss.detach(),
            pg_clipfrac=masked_mean(any_clip.to(ratio.dtype), mask),
            pg_clipfrac_low=masked_mean(clipped["low"].to(ratio.dtype), mask),
            pg_clipfrac_high=masked_mean(clipped["high"].to(ratio.dtype), mask),
            pg_clipfrac_dual=masked_mean(clipped["dual"].to(ratio.dtype), mask),
            ppo_kl=masked_mean(-log_ratio, mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_max=torch.where(has_tokens, torch.where(mask, ratio, -big).max(), one),
            ratio_min=torch.where(has_tokens, torch.where(mask, ratio, big).min(), one),
        )
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy.detach(), mask)
    return loss, metrics


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    config: PolicyLossConfig | None = None,
    rollout_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric clip (clip-higher), dual clip and optional TIS.

    Formula, per token (``r = exp(logp - logp_old)``, ``A`` the advantage)::

        l = max(-A r, -A clip(r, 1 - eps_clip, 1 + eps_clip_high))      # PPO, arXiv 1707.06347
        l = min(l, -A eps_clip_c)  where A < 0                            # dual clip, arXiv 1912.09729
        l = l * min(exp(logp_old - logp_rollout), tis_cap)                # TIS (Yao et al. 2025)
        loss = aggregate(l, loss_mask, aggregation)

    ``eps_clip_high > eps_clip`` is DAPO's clip-higher (arXiv 2503.14476).

    Args:
        logprobs: ``[B, T]`` log-probabilities of the sampled tokens under the current policy
            (with gradient).
        old_logprobs: ``[B, T]`` the same under the policy that the advantages were computed for
            (the trainer's, before this step's updates).
        advantages: ``[B, T]`` (0 where ``loss_mask`` is 0).
        loss_mask: ``[B, T]``, 1 on model-generated tokens.
        config: clip ranges, aggregation and TIS (defaults: :class:`PolicyLossConfig`).
        rollout_logprobs: ``[B, T]`` engine logprobs; adds mismatch metrics, and TIS weights when
            ``config.use_tis``.
        entropy: ``[B, T]`` per-token entropies, only reported as the ``entropy`` metric.
        denominator: global aggregation count for micro-batches (see ``agentrl.algo.aggregate``).

    Returns:
        ``(loss, metrics)``: a scalar and a dict of detached scalars (listed in the module doc).

    Example::

        >>> lp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
        >>> adv = torch.tensor([[1.0, 1.0, 0.0]]); mask = torch.tensor([[1, 1, 0]])
        >>> loss, m = ppo_clip_loss(lp, lp.detach(), adv, mask)   # on-policy: r = 1
        >>> loss, m["pg_clipfrac"], m["ppo_kl"]
        (tensor(-1., grad_fn=<DivBackward0>), tensor(0.), tensor(0.))
    """
    config = config or PolicyLossConfig()
    _check_shapes(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, loss_mask=loss_mask,
        rollout_logprobs=rollout_logprobs, entropy=entropy,
    )
    mask = loss_mask.bool()
    # where, not multiply: padded positions may hold anything, exp() of it must not overflow.
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    ratio = torch.exp(log_ratio)
    per_token, clipped = _clipped_surrogate(ratio, advantages, config)  # [B, T]
    return _finish(
        per_token, clipped, ratio, log_ratio, advantages, old_logprobs, loss_mask, config, rollout_logprobs,
        entropy, denominator,
    )


def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    config: PolicyLossConfig | None = None,
    rollout_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO: PPO clipping on the length-normalised sequence ratio (Zheng et al., arXiv 2507.18071).

    Formula (``|y_i|`` = unmasked tokens of episode ``i``)::

        s_i   = exp( (1/|y_i|) sum_t (logp_it - logp_old_it) )        # Eq. 7
        s_it  = sg[s_i] * pi(y_it) / sg[pi(y_it)]                      # GSPO-token, Eq. 13
        l_it  = max(-A_it s_it, -A_it clip(s_it, 1 - eps_clip, 1 + eps_clip_high))

    ``s_it`` has the value of ``s_i`` and gradient ``s_i * grad log pi(y_it)``; with an advantage
    constant over the episode (GRPO's), it is exactly GSPO. Every token of an episode therefore
    shares one ratio and one clip decision. Aggregate with ``seq_mean_token_mean`` to get the
    paper's ``(1/G) sum_i``; ``token_mean`` weighs episodes by length. GSPO's clip ranges are
    small (the paper uses ``eps_clip=3e-4``, ``eps_clip_high=4e-4``). Dual clip and TIS apply
    per token as in :func:`ppo_clip_loss`; the ``ratio_*`` metrics are of ``s_i``.

    Args and returns: as :func:`ppo_clip_loss`.

    Example::

        >>> lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
        >>> old = torch.tensor([[-1.5, -2.5]])            # s = exp(mean(0.5, 0.5)) = exp(0.5)
        >>> cfg = PolicyLossConfig(eps_clip=0.2, eps_clip_high=1.0, aggregation="seq_mean_token_mean")
        >>> loss, m = gspo_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), config=cfg)
        >>> round(loss.item(), 4), round(m["ratio_mean"].item(), 4)
        (-1.6487, 1.6487)
    """
    config = config or PolicyLossConfig()
    _check_shapes(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, loss_mask=loss_mask,
        rollout_logprobs=rollout_logprobs, entropy=entropy,
    )
    mask = loss_mask.bool()
    token_log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    seq_log_ratio = masked_mean(token_log_ratio.detach(), mask, dim=-1)  # [B], log s_i
    safe_logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
    log_ratio = seq_log_ratio.unsqueeze(-1) + safe_logprobs - safe_logprobs.detach()  # [B, T]
    log_ratio = torch.where(mask, log_ratio, torch.zeros_like(log_ratio))
    ratio = torch.exp(log_ratio)
    per_token, clipped = _clipped_surrogate(ratio, advantages, config)  # [B, T]
    return _finish(
        per_token, clipped, ratio, log_ratio, advantages, old_logprobs, loss_mask, config, rollout_logprobs,
        entropy, denominator,
    )


def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    config: PolicyLossConfig | None = None,
    rollout_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: clip the importance weight, not the update (MiniMax-M1, arXiv 2506.13585, Eq. 4-5).

    Formula, per token (``r = exp(logp - logp_old)``)::

        w = min(r, 1 + eps_clip_high)                        # the clipped IS weight, no gradient
        J = sg(w) * A * log pi(y_t)                          # Eq. 4: its gradient is w * A * grad log pi
        l = -A * sg(w) * exp(logp - sg(logp))                # what is computed: the same gradient,
                                                             # value -A w (PPO's surrogate value)
        l = l * min(exp(logp_old - logp_rollout), tis_cap)   # TIS, as in the other losses
        loss = aggregate(l, loss_mask, aggregation)

    PPO drops the gradient of a token whose ratio left the trust region; CISPO keeps every token's
    gradient and only bounds its weight, so rare tokens that the first update made likelier go on
    learning. As in the paper there is no lower bound on the weight (MiniMax-M1 sets
    ``eps_low`` large and tunes only ``eps_high``): ``eps_clip`` and the dual clip ``eps_clip_c``
    are not used. With ratio 1 (the first step on a rollout) the gradient is PPO's. The paper
    aggregates with ``token_mean``.

    Args and returns: as :func:`ppo_clip_loss`; ``pg_clipfrac`` counts clipped weights.

    Example::

        >>> lp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
        >>> old = torch.tensor([[-1.0, -2.0]])             # ratios 1 and e = 2.718 -> weight 1.28
        >>> cfg = PolicyLossConfig(eps_clip_high=0.28)
        >>> loss, m = cispo_loss(lp, old, torch.ones(1, 2), torch.ones(1, 2), config=cfg)
        >>> loss.backward(); round(loss.item(), 4), lp.grad, m["pg_clipfrac"]   # PPO's grad would be [-0.5, 0]
        (-1.14, tensor([[-0.5000, -0.6400]]), tensor(0.5000))
    """
    config = config or PolicyLossConfig()
    _check_shapes(
        logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, loss_mask=loss_mask,
        rollout_logprobs=rollout_logprobs, entropy=entropy,
    )
    mask = loss_mask.bool()
    log_ratio = torch.where(mask, logprobs - old_logprobs, torch.zeros_like(logprobs))  # [B, T]
    ratio = torch.exp(log_ratio)
    high = 1.0 + config.clip_high
    clipped_high = ratio.detach() > high
    weight = ratio.detach().clamp(max=high)  # [B, T], sg(w)
    safe_logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
    per_token = -advantages * weight * torch.exp(safe_logprobs - safe_logprobs.detach())  # value -A w
    none = torch.zeros_like(clipped_high)
    clipped = {"low": none, "high": clipped_high, "dual": none}
    return _finish(
        per_token, clipped, ratio, log_ratio, advantages, old_logprobs, loss_mask, config, rollout_logprobs,
        entropy, denominator,
    )


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    loss_mask: Tensor,
    *,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
    max_length: float | None = None,
    denominator: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO with a critic.

    Formula (the clipped value objective of OpenAI baselines' PPO2, discussed in Engstrom et
    al., "Implementation Matters in Deep Policy Gradients", arXiv 2005.12729; PPO arXiv 1707.06347
    Eq. 9 for the unclipped term)::

        V_clip = V_old + clip(V - V_old, -clip, clip)
        l      = 0.5 * max((V - R)^2, (V_clip - R)^2)
        loss   = aggregate(l, loss_mask, aggregation)

    Args:
        values: ``[B, T]`` current critic predictions (with gradient).
        old_values: ``[B, T]`` predictions when the returns were computed.
        returns: ``[B, T]`` targets (``advantages + old_values`` from :func:`compute_gae`).
        loss_mask: ``[B, T]``.
        clip: the clip range; ``None`` gives the plain ``0.5 (V - R)^2``.
        aggregation, max_length, denominator: as :func:`agentrl.algo.aggregate`.

    Returns:
        ``(loss, metrics)`` with ``vf_loss``, ``vf_clipfrac`` (clipped term chosen) and
        ``vpred_mean``.

    Example::

        >>> v = torch.tensor([[1.0, 0.0]], requires_grad=True)
        >>> loss, m = value_loss(v, torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), clip=0.5)
        >>> loss     # token 0: max(1^2, 0.5^2) / 2 = 0.5; token 1: 0 -> mean 0.25
        tensor(0.2500, grad_fn=<DivBackward0>)
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, loss_mask=loss_mask)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None; got {clip}")
    unclipped = (values - returns).square()  # [B, T]
    if clip is None:
        per_token = 0.5 * unclipped
        clipped_used = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (v_clipped - returns).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        clipped_used = clipped > unclipped
    loss = aggregate(per_token, loss_mask, aggregation, max_length=max_length, denominator=denominator)
    mask = loss_mask.bool()
    with torch.no_grad():
        metrics = {
            "vf_loss": loss.detach(),
            "vf_clipfrac": masked_mean(clipped_used.to(values.dtype), mask),
            "vpred_mean": masked_mean(values.detach(), mask),
        }
    return loss, metrics
