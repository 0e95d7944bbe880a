"""Loss aggregation: how per-token values ``[B, T]`` become one scalar.

Three modes, selected by name (``PolicyLossConfig.aggregation``):

``token_mean``
    ``sum_{i,t} m_it x_it / sum_{i,t} m_it``. Every unmasked token of the batch weighs the
    same, so long episodes weigh more than short ones. DAPO (arXiv 2503.14476, Sec. 3.3,
    "token-level policy gradient loss") argues for it; it is the default.
``seq_mean_token_mean``
    ``(1/S) sum_i [ sum_t m_it x_it / sum_t m_it ]``. Each episode is averaged over its own
    tokens, then episodes are averaged: the original GRPO objective (DeepSeekMath,
    arXiv 2402.03300, Eq. 3). A token of a short episode weighs more than one of a long episode.
``seq_mean_token_sum_norm``
    ``(1/S) sum_i [ sum_t m_it x_it / L ]`` with a constant ``L`` (the maximum response length):
    Dr. GRPO (arXiv 2503.20783, Sec. 3.1) removes GRPO's per-episode length normalisation,
    which biases towards long wrong answers, and divides by a constant instead.

``S`` is the number of episodes with at least one unmasked token: rows that are all padding
count for nothing in any mode, so the result does not change when empty rows or padding
columns are added.

**Micro-batches and data parallelism.** A trainer that splits one optimiser step's batch into
micro-batches (and ranks) gets exactly the full-batch value by passing the *global*
denominator to every micro-batch and *summing* the micro-batch losses (calling ``backward`` on
each without dividing by the number of micro-batches)::

    denom = sum(aggregation_denominator(mb.loss_mask, mode) for mb in micro_batches)
    # (with data parallelism, also all-reduce(sum) ``denom`` across ranks, and multiply the
    #  loss by the world size if the gradient all-reduce averages instead of summing)
    for mb in micro_batches:
        aggregate(per_token_loss(mb), mb.loss_mask, mode, denominator=denom).backward()

``aggregation_denominator`` returns the number of unmasked tokens for ``token_mean`` and the
number of non-empty episodes for the two sequence modes. Without ``denominator`` each call
uses its own local count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from agentrl.algo._names import check_name

AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def check_aggregation(mode: str) -> str:
    """Return ``mode`` if it is a known aggregation, else raise ``ValueError`` (did you mean).

    Example::

        >>> check_aggregation("seq_mean_token_mean")
        'seq_mean_token_mean'
    """
    return check_name("aggregation mode", mode, AGGREGATIONS)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 where nothing is unmasked (never NaN).

    Shapes: ``values`` and ``mask`` broadcastable, e.g. ``[B, T]``; the result is a scalar
    (``dim=None``) or reduces ``dim``.

    Example::

        >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]]))
        tensor(1.5000)
    """
    masked = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    mask = mask.to(values.dtype)
    total = masked.sum() if dim is None else masked.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def aggregation_denominator(loss_mask: Tensor, mode: str) -> Tensor:
    """The count ``aggregate`` divides by for ``mode``, local to this ``loss_mask`` ``[B, T]``.

    ``token_mean``: number of unmasked tokens. The two sequence modes: number of episodes with
    at least one unmasked token. Sum it over micro-batches (and ranks) and pass the total as
    ``denominator=`` to get the full-batch value from micro-batches (see the module docstring).

    Example::

        >>> m = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
        >>> aggregation_denominator(m, "token_mean"), aggregation_denominator(m, "seq_mean_token_mean")
        (tensor(3.), tensor(2.))
    """
    check_aggregation(mode)
    mask = loss_mask.to(torch.float32) if not loss_mask.is_floating_point() else loss_mask
    if mode == "token_mean":
        return mask.sum()
    return (mask.sum(-1) > 0).to(mask.dtype).sum()


def aggregate(
    values: Tensor,
    loss_mask: Tensor,
    mode: str = "token_mean",
    *,
    max_length: float | None = None,
    denominator: float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token ``values`` ``[B, T]`` to a scalar over tokens where ``loss_mask`` is 1.

    Formulas (``m`` the mask, ``S`` the number of non-empty episodes, ``L`` = ``max_length``):

    * ``token_mean``: ``sum_it m x / sum_it m`` (DAPO, arXiv 2503.14476);
    * ``seq_mean_token_mean``: ``(1/S) sum_i (sum_t m x / sum_t m)`` (GRPO, arXiv 2402.03300);
    * ``seq_mean_token_sum_norm``: ``(1/S) sum_i (sum_t m x) / L`` (Dr. GRPO, arXiv 2503.20783).

    Args:
        values: ``[B, T]`` per-token values (a loss, a KL, an entropy).
        loss_mask: ``[B, T]``, 1 on tokens that count (bool, int or float).
        mode: one of :data:`AGGREGATIONS`.
        max_length: ``L`` for ``seq_mean_token_sum_norm``; pass a constant (the maximum
            response length of the run). When ``None``, ``T`` (the padded width) is used,
            which makes the value depend on padding.
        denominator: the global count from :func:`aggregation_denominator` summed over all
            micro-batches; replaces the local ``sum m`` (token_mean) or ``S`` (sequence modes).

    Returns:
        A scalar tensor; 0 when nothing is unmasked.

    Example::

        >>> x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
        >>> m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
        >>> aggregate(x, m, "token_mean")                  # (4 + 4) / 5
        tensor(1.6000)
        >>> aggregate(x, m, "seq_mean_token_mean")         # (1 + 4) / 2
        tensor(2.5000)
        >>> aggregate(x, m, "seq_mean_token_sum_norm", max_length=4)   # (4/4 + 4/4) / 2
        tensor(1.)
    """
    check_aggregation(mode)
    if values.shape != loss_mask.shape:
        raise ValueError(
            f"values and loss_mask must have the same shape [B, T]; got {tuple(values.shape)} "
            f"and {tuple(loss_mask.shape)}"
        )
    if values.dim() != 2:
        raise ValueError(f"expected [B, T] tensors; got {values.dim()} dimensions")
    mask = loss_mask.to(values.dtype)
    # where, not multiply: a NaN/inf at a padded position must not leak into the sum.
    masked = torch.where(loss_mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    if mode == "token_mean":
        total = masked.sum()
    else:
        token_counts = mask.sum(-1)  # [B]
        if mode == "seq_mean_token_mean":
            per_seq = masked.sum(-1) / token_counts.clamp(min=1)  # [B]
        else:
            length = float(values.shape[-1]) if max_length is None else float(max_length)
            if length <= 0:
                raise ValueError(f"max_length must be > 0; got {max_length}")
            per_seq = masked.sum(-1) / length  # [B]
        total = per_seq.sum()
    if denominator is None:
        denominator = aggregation_denominator(mask, mode)
    if not isinstance(denominator, Tensor):
        denominator = torch.tensor(float(denominator), dtype=values.dtype, device=values.device)
    return total / denominator.to(device=values.device, dtype=values.dtype).clamp(min=1)
