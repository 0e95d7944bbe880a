"""Entropy and token log-probabilities from logits, chunked over tokens.

Logits are ``[B, T, V]`` with ``V`` up to ~150k, so a float32 softmax of the whole tensor
(plus what autograd keeps for backward) can cost more memory than the model. The functions
here process ``chunk_size`` tokens at a time in float32 (float64 stays float64), in the forward
and again in the backward pass: autograd saves only the input logits (which it keeps anyway),
never a softmax, and the peak extra memory is a few ``[chunk_size, V]`` float32 blocks.

Formulas, for logits ``z`` over the vocabulary and ``p = softmax(z)``:

* entropy ``H = -sum_v p_v log p_v``; gradient ``dH/dz_v = -p_v (log p_v + H)``;
* log-probability of label ``y``: ``log p_y = z_y - logsumexp(z)``; gradient
  ``d/dz_v = 1[v = y] - p_v``.

The entropy bonus of PPO (arXiv 1707.06347, Eq. 9) is ``-coef * aggregate(H, loss_mask)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_SIZE = 512


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_chunk(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


class _ChunkedLogitsStats(torch.autograd.Function):
    """Token log-probabilities and/or entropies of ``[N, V]`` logits with one chunked backward.

    Both outputs share one pass over the logits and one gradient buffer, so asking for both
    costs no more memory than asking for one.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor | None, chunk_size: int, with_entropy: bool):  # type: ignore[override]
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        dtype = _compute_dtype(logits.dtype)
        n = flat.shape[0]
        logprobs = torch.empty(n if labels is not None else 0, dtype=dtype, device=logits.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=dtype, device=logits.device)
        flat_labels = labels.reshape(-1, 1) if labels is not None else None  # [N, 1]
        for start in range(0, n, chunk_size):
            end = start + chunk_size
            logp = torch.log_softmax(flat[start:end].to(dtype), dim=-1)  # [C, V]
            if flat_labels is not None:
                logprobs[start:end] = logp.gather(-1, flat_labels[start:end]).squeeze(-1)
            if with_entropy:
                entropy[start:end] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, flat_labels)
        ctx.chunk_size = chunk_size
        return logprobs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs: Tensor, grad_entropy: Tensor):  # type: ignore[override]
        logits, flat_labels = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        dtype = _compute_dtype(logits.dtype)
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            logp = torch.log_softmax(flat[start:end].to(dtype), dim=-1)  # [C, V]
            p = logp.exp()
            chunk_grad = torch.zeros_like(logp)
            if grad_entropy.numel():
                # dH/dz_v = -p_v (log p_v + H)
                h = -(p * logp).sum(-1, keepdim=True)  # [C, 1]
                chunk_grad -= p * (logp + h) * grad_entropy[start:end, None]
            if flat_labels is not None:
                # d log p_y / dz_v = 1[v = y] - p_v
                g = grad_logprobs[start:end, None]  # [C, 1]
                chunk_grad -= p * g
                chunk_grad.scatter_add_(-1, flat_labels[start:end], g)
            grad[start:end] = chunk_grad.to(grad.dtype)
        return grad.view_as(logits), None, None, None


def entropy_from_logits(logits: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Entropy of the next-token distribution at every position, ``H = -sum_v p_v log p_v``.

    Differentiable (for an entropy bonus, PPO arXiv 1707.06347 Eq. 9) with a chunked backward;
    under ``torch.no_grad()`` it is a cheap metric.

    Args:
        logits: ``[B, T, V]`` (any leading shape ``[..., V]``), any float dtype.
        chunk_size: tokens per chunk; peak extra memory is about ``3 * chunk_size * V`` floats.

    Returns:
        ``[B, T]`` in float32 (float64 for float64 logits), in nats.

    Example::

        >>> logits = torch.zeros(1, 2, 4)                 # uniform over 4 tokens
        >>> entropy_from_logits(logits)                   # log 4 = 1.3863
        tensor([[1.3863, 1.3863]])
    """
    _check_chunk(chunk_size)
    return _ChunkedLogitsStats.apply(logits, None, chunk_size, True)[1].view(logits.shape[:-1])


def logprobs_from_logits(logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Log-probability of each label, ``log p_y = z_y - logsumexp(z)``, chunked over tokens.

    Args:
        logits: ``[B, T, V]`` (any leading shape ``[..., V]``) predicting each label.
        labels: ``[B, T]`` long token ids, the same leading shape. (For a causal LM, pass
            ``logits[:, :-1]`` and ``input_ids[:, 1:]``.)
        chunk_size: tokens per chunk.

    Returns:
        ``[B, T]`` in float32 (float64 for float64 logits), differentiable in ``logits``.

    Example::

        >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
        >>> logprobs_from_logits(logits, torch.tensor([[1, 0]]))   # log(1/2), log(e^2/(e^2+1))
        tensor([[-0.6931, -0.1269]])
    """
    _check_chunk(chunk_size)
    _check_labels(logits, labels)
    return _ChunkedLogitsStats.apply(logits, labels.long(), chunk_size, False)[0].view(labels.shape)


def logprobs_and_entropy(
    logits: Tensor, labels: Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """Both :func:`logprobs_from_logits` and :func:`entropy_from_logits` in one pass.

    Use it when the entropy is part of the loss (an entropy bonus): the two gradients are
    accumulated into one ``[B, T, V]`` buffer inside a single backward, where calling the two
    functions separately makes autograd hold two such buffers and their sum.

    Returns:
        ``(logprobs [B, T], entropy [B, T])``, float32 (float64 for float64 logits).

    Example::

        >>> lp, h = logprobs_and_entropy(torch.zeros(1, 1, 4), torch.tensor([[2]]))
        >>> lp, h                                           # log(1/4), log 4
        (tensor([[-1.3863]]), tensor([[1.3863]]))
    """
    _check_chunk(chunk_size)
    _check_labels(logits, labels)
    logprobs, entropy = _ChunkedLogitsStats.apply(logits, labels.long(), chunk_size, True)
    return logprobs.view(labels.shape), entropy.view(labels.shape)


def _check_labels(logits: Tensor, labels: Tensor) -> None:
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have the shape of logits without the vocabulary axis, "
            f"{tuple(logits.shape[:-1])}; got {tuple(labels.shape)}"
        )
