"""Per-token KL estimators between the policy and a reference model.

Tokens are sampled from the policy ``pi``; with ``log_r = log ref(y_t) - log pi(y_t)`` the
estimators of ``KL(pi || ref)`` from J. Schulman, "Approximating KL Divergence" (blog, 2020,
http://joschu.net/blog/kl-approx.html) are:

``k1 = -log_r``
    unbiased, high variance, can be negative.
``k2 = 0.5 * log_r ** 2``
    biased, low variance, non-negative.
``k3 = exp(log_r) - 1 - log_r``
    unbiased, low variance, non-negative (the GRPO KL term, DeepSeekMath arXiv 2402.03300 Eq. 4).
``low_var_kl``
    ``k3`` with ``log_r`` clamped to ``[-20, 20]`` and the result clamped to ``[-10, 10]``, so a
    single token where the two models disagree wildly cannot dominate (as in verl).

The result is a ``[B, T]`` tensor. As a loss term, aggregate it like the policy loss::

    kl_loss = aggregate(kl_penalty(logp, ref_logp, "low_var_kl"), loss_mask, mode)

As reward shaping (PPO/REINFORCE++ style), subtract it from the token rewards, without
gradient::

    token_rewards = place_rewards_at_turn_ends(rewards, loss_mask) \\
        - beta * kl_penalty(old_logp, ref_logp, "k1", loss_mask=loss_mask)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from agentrl.algo._names import check_name


def _k1(log_r: Tensor) -> Tensor:
    return -log_r


def _k2(log_r: Tensor) -> Tensor:
    return 0.5 * log_r.square()


def _k3(log_r: Tensor) -> Tensor:
    return torch.expm1(log_r) - log_r


def _low_var_kl(log_r: Tensor) -> Tensor:
    return _k3(log_r.clamp(-20.0, 20.0)).clamp(-10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
    "low_var_kl": _low_var_kl,
}
"""Estimator name -> function of ``log_r = ref_logprobs - logprobs`` (elementwise)."""


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    kind: str = "low_var_kl",
    *,
    loss_mask: Tensor | None = None,
) -> Tensor:
    """Per-token estimate of ``KL(pi || ref)`` at the sampled tokens.

    Formula: with ``log_r = ref_logprobs - logprobs``, ``k1 = -log_r``,
    ``k2 = log_r**2 / 2``, ``k3 = exp(log_r) - 1 - log_r``, ``low_var_kl = clamp(k3)``
    (Schulman, "Approximating KL Divergence", 2020; k3 is GRPO's KL, arXiv 2402.03300 Eq. 4).

    Args:
        logprobs: ``[B, T]`` log-probabilities of the sampled tokens under the policy.
        ref_logprobs: ``[B, T]`` the same under the reference model.
        kind: one of ``k1``, ``k2``, ``k3``, ``low_var_kl``.
        loss_mask: optional ``[B, T]``; when given, the result is 0 where it is 0.

    Returns:
        ``[B, T]``, differentiable with respect to both inputs.

    Example::

        >>> lp = torch.tensor([[-1.0, -2.0]])
        >>> kl_penalty(lp, lp, "k3")                      # same model: KL 0
        tensor([[0., 0.]])
        >>> kl_penalty(lp, lp - 1.0, "k1")                # log_r = -1 -> k1 = 1
        tensor([[1., 1.]])
    """
    check_name("KL estimator", kind, KL_ESTIMATORS)
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs and ref_logprobs must have the same shape; got {tuple(logprobs.shape)} "
            f"and {tuple(ref_logprobs.shape)}"
        )
    kl = KL_ESTIMATORS[kind](ref_logprobs - logprobs)
    if loss_mask is not None:
        kl = torch.where(loss_mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl
