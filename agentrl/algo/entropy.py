"""Entropy and token log-probabilities from logits, chunked over tokens.

Logits are ``[B, T, V]`` with ``V`` up to ~150k, so a float32 softmax of the whole tensor
(plus what autograd keeps for backward) can cost more memory than the model. Both functions
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


class _ChunkedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        out = torch.empty(flat.shape[0], dtype=_compute_dtype(logits.dtype), device=logits.device)
        for start in range(0, flat.shape[0], chunk_size):
            logp = torch.log_softmax(flat[start : start + chunk_size].to(out.dtype), dim=-1)  # [C, V]
            out[start : start + chunk_size] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits)
        ctx.chunk_size = chunk_size
        return out.view(logits.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (logits,) = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        g = grad_out.reshape(-1)  # [N]
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            logp = torch.log_softmax(flat[start:end].to(g.dtype), dim=-1)  # [C, V]
            p = logp.exp()
            h = -(p * logp).sum(-1, keepdim=True)  # [C, 1]
            grad[start:end] = (-(p * (logp + h)) * g[start:end, None]).to(grad.dtype)
        return grad.view_as(logits), None


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        flat_labels = labels.reshape(-1, 1)  # [N, 1]
        out = torch.empty(flat.shape[0], dtype=_compute_dtype(logits.dtype), device=logits.device)
        for start in range(0, flat.shape[0], chunk_size):
            end = start + chunk_size
            z = flat[start:end].to(out.dtype)  # [C, V]
            out[start:end] = z.gather(-1, flat_labels[start:end]).squeeze(-1) - torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk_size = chunk_size
        return out.view(labels.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, labels = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
        flat_labels = labels.reshape(-1, 1)
        g = grad_out.reshape(-1, 1)  # [N, 1]
        grad = torch.empty_like(flat)
        for start in range(0, flat.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            chunk_grad = -torch.softmax(flat[start:end].to(g.dtype), dim=-1)  # [C, V]
            chunk_grad.scatter_add_(-1, flat_labels[start:end], torch.ones_like(g[start:end]))
            grad[start:end] = (chunk_grad * g[start:end]).to(grad.dtype)
        return grad.view_as(logits), None, None


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
    return _ChunkedEntropy.apply(logits, chunk_size)


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
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have the shape of logits without the vocabulary axis, "
            f"{tuple(logits.shape[:-1])}; got {tuple(labels.shape)}"
        )
    return _ChunkedLogprobs.apply(logits, labels.long(), chunk_size)
