"""Truncated importance sampling (TIS) for the rollout-vs-training mismatch.

The inference engine that sampled the tokens (SGLang, the embedded engine) and the trainer
compute slightly different probabilities for the same weights (kernels, precision, batch
shapes), so the rollout policy ``pi_rollout`` is not exactly ``pi_old`` and training is
silently off-policy. Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy
RL Training" (2025, https://fengyao.notion.site/off-policy-rl) correct it by weighting each
token's policy-gradient loss with the truncated ratio

    w_t = min( exp(logp_old_train_t - logp_rollout_t), C )

treated as a constant (no gradient). ``C`` (``tis_cap``, 2 by default) bounds the variance.

Mismatch metrics (masked means over the tokens where ``loss_mask`` is 1):

* ``rollout_train_abs_diff``: ``mean |logp_old_train - logp_rollout|``;
* ``rollout_train_kl``: ``mean k3`` with ``log_r = logp_old_train - logp_rollout``, i.e. an
  estimate of ``KL(pi_rollout || pi_old_train)`` from the rollout's own samples (Schulman's
  k3 estimator; non-negative);
* ``tis_clipfrac``: fraction of tokens whose raw ratio exceeded ``C``; ``tis_weight_mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentrl.algo.aggregate import masked_mean


def tis_weights(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    loss_mask: Tensor,
    cap: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance weights ``clamp(exp(old_logprobs - rollout_logprobs), max=cap)``.

    Source: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training".

    Args:
        old_logprobs: ``[B, T]`` trainer log-probabilities of the sampled tokens before the update.
        rollout_logprobs: ``[B, T]`` the engine's log-probabilities of the same tokens.
        loss_mask: ``[B, T]``; weights are 1 where it is 0.
        cap: ``C`` > 0, the truncation.

    Returns:
        ``(weights [B, T]`` detached, ``metrics)``: ``tis_weight_mean``, ``tis_clipfrac`` and the
        mismatch metrics of :func:`rollout_mismatch_metrics`.

    Example::

        >>> old = torch.tensor([[-1.0, -1.0]]); rollout = torch.tensor([[-1.0, -2.0]])
        >>> w, m = tis_weights(old, rollout, torch.ones(1, 2), cap=2.0)
        >>> w                      # exp(0) = 1, exp(1) = 2.718 -> capped at 2
        tensor([[1., 2.]])
        >>> m["tis_clipfrac"]
        tensor(0.5000)
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0; got {cap}")
    if old_logprobs.shape != rollout_logprobs.shape or old_logprobs.shape != loss_mask.shape:
        raise ValueError(
            "old_logprobs, rollout_logprobs and loss_mask must share a shape [B, T]; got "
            f"{tuple(old_logprobs.shape)}, {tuple(rollout_logprobs.shape)}, {tuple(loss_mask.shape)}"
        )
    with torch.no_grad():
        mask = loss_mask.bool()
        log_ratio = torch.where(mask, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        raw = torch.exp(log_ratio)  # [B, T]
        weights = raw.clamp(max=cap)
        metrics = {
            "tis_weight_mean": masked_mean(weights, mask),
            "tis_clipfrac": masked_mean((raw > cap).to(raw.dtype), mask),
        }
        metrics.update(rollout_mismatch_metrics(old_logprobs, rollout_logprobs, loss_mask))
    return weights, metrics


def rollout_mismatch_metrics(
    old_logprobs: Tensor, rollout_logprobs: Tensor, loss_mask: Tensor
) -> dict[str, Tensor]:
    """How far the trainer's and the engine's log-probabilities of the sampled tokens differ.

    ``rollout_train_abs_diff = mean |old - rollout|`` and ``rollout_train_kl = mean k3`` with
    ``log_r = old - rollout`` (``exp(log_r) - 1 - log_r``, Schulman 2020), masked means over
    ``[B, T]``. Both are 0 when the two agree.

    Example::

        >>> old = torch.tensor([[-1.0, -2.0]]); rollout = torch.tensor([[-1.5, -2.0]])
        >>> rollout_mismatch_metrics(old, rollout, torch.ones(1, 2))["rollout_train_abs_diff"]
        tensor(0.2500)
    """
    with torch.no_grad():
        mask = loss_mask.bool()
        log_r = torch.where(mask, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        return {
            "rollout_train_abs_diff": masked_mean(log_r.abs(), mask),
            "rollout_train_kl": masked_mean(torch.expm1(log_r) - log_r, mask),
        }
