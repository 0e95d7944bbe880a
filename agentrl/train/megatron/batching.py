"""Model inputs for the Megatron backend: padded or packed micro-batches, and their split across
data-parallel ranks.

Two layouts of the token sequences of one micro-batch:

* **padded** ``[b, L]``: one row per sample, right-padded. With causal attention no real token
  sees a pad (pads come after it), so no mask is needed and flash kernels apply.
* **packed** ``[1, T]`` (``thd``): samples back to back, ``PackedSeqParams.cu_seqlens`` marking
  the boundaries; attention and RoPE positions restart at each sample (see ``attention.py``).
  No compute is spent on padding.

Either way the model yields next-token log-probabilities at every position; ``index`` picks, for
each sample, the positions that predict its response tokens and lays them out like
:class:`~agentrl.train.batch.RolloutBatch` (right-aligned ``[b, R]`` columns).

Example::

    >>> from agentrl.types import Sample
    >>> s = [Sample(prompt_ids=[1, 2], response_ids=[3, 4], loss_mask=[1, 1], rollout_logprobs=[-1.0, -1.0])]
    >>> mb = build_inputs(s, width=3, pack=True)
    >>> mb.input_ids.tolist(), mb.index.tolist(), mb.valid.tolist()
    ([[1, 2, 3, 4]], [[0, 1, 2]], [[False, True, True]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agentrl.types import Sample


@dataclass
class ModelInputs:
    """One micro-batch ready for ``GPTModel.forward``."""

    input_ids: Tensor
    """``[rows, L]`` long: ``[b, L]`` padded, or ``[1, T]`` packed."""
    targets: Tensor
    """``[rows, L]`` the next token at each position (0 where there is none)."""
    index: Tensor
    """``[b, R]`` flat position (into ``rows * L``) whose prediction is response column ``r``."""
    valid: Tensor
    """``[b, R]`` bool: the column holds a response token of the sample."""
    cu_seqlens: Tensor | None = None
    """``[b + 1]`` int32 sample boundaries when packed (the tail padding is a last segment)."""
    max_seqlen: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def packed_seq_params(self) -> Any:
        """megatron-core ``PackedSeqParams`` (``thd``) for a packed batch, else None."""
        if self.cu_seqlens is None:
            return None
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)

    def to(self, device: torch.device | str) -> "ModelInputs":
        return ModelInputs(
            input_ids=self.input_ids.to(device, non_blocking=True),
            targets=self.targets.to(device, non_blocking=True),
            index=self.index.to(device, non_blocking=True),
            valid=self.valid.to(device, non_blocking=True),
            cu_seqlens=None if self.cu_seqlens is None else self.cu_seqlens.to(device, non_blocking=True),
            max_seqlen=self.max_seqlen,
        )


def build_inputs(samples: Sequence[Sample], width: int, *, pack: bool, pad_multiple: int = 1) -> ModelInputs:
    """Inputs for ``samples`` whose response columns are the last ``width`` of a right-aligned batch.

    ``pad_multiple``: the padded length (or packed total) is rounded up to a multiple of it
    (sequence parallelism needs a multiple of the tensor-parallel size).
    """
    if not samples:
        raise ValueError("build_inputs needs at least one sample")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    for s in samples:
        if s.response_ids and not s.prompt_ids:
            raise ValueError("a sample with a response needs at least one prompt token to predict it from")
        if len(s.response_ids) > width:
            raise ValueError(f"response of {len(s.response_ids)} tokens does not fit width {width}")
    step = max(1, pad_multiple)
    index = torch.zeros(len(samples), width, dtype=torch.long)
    valid = torch.zeros(len(samples), width, dtype=torch.bool)
    if pack:
        total = -(-sum(lengths) // step) * step
        ids = torch.zeros(1, total, dtype=torch.long)
        bounds = [0]
        for s, n in zip(samples, lengths):
            ids[0, bounds[-1]:bounds[-1] + n] = torch.tensor(s.tokens, dtype=torch.long)
            bounds.append(bounds[-1] + n)
        starts = bounds[:-1]
        if total > bounds[-1]:
            bounds.append(total)
        cu = torch.tensor(bounds, dtype=torch.int32)
        max_len = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    else:
        length = -(-max(lengths) // step) * step
        ids = torch.zeros(len(samples), length, dtype=torch.long)
        for i, s in enumerate(samples):
            ids[i, :lengths[i]] = torch.tensor(s.tokens, dtype=torch.long)
        starts = [i * length for i in range(len(samples))]
        cu, max_len = None, 0
    for i, (s, start) in enumerate(zip(samples, starts)):
        r, p = len(s.response_ids), len(s.prompt_ids)
        if r:
            # response token j (position p + j) is predicted at position p + j - 1
            index[i, width - r:] = torch.arange(start + p - 1, start + p + r - 1)
            valid[i, width - r:] = True
    flat = ids.reshape(-1)
    targets = torch.cat([flat[1:], flat.new_zeros(1)]).reshape(ids.shape)
    return ModelInputs(input_ids=ids, targets=targets, index=index, valid=valid, cu_seqlens=cu, max_seqlen=max_len)


def gather_response(per_position: Tensor, inputs: ModelInputs) -> Tensor:
    """``[rows, L]`` per-position values -> ``[b, R]`` response columns (0 where not valid)."""
    out = per_position.reshape(-1)[inputs.index.reshape(-1)].reshape(inputs.index.shape)
    return torch.where(inputs.valid, out, torch.zeros_like(out))


def pack_micro_batches(samples: Sequence[Sample], max_tokens: int) -> list[list[int]]:
    """Indices of samples grouped so each group's total tokens stay within ``max_tokens``
    (first-fit decreasing; a sample longer than the budget goes alone)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].tokens))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(samples[i].tokens)
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_tokens - n)
    return [sorted(b) for b in bins]


def split_data_parallel(samples: Sequence[Sample], dp_size: int) -> list[list[int]]:
    """Sample indices for each data-parallel rank, balanced by token count (deterministic)."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].tokens), i))
    parts: list[list[int]] = [[] for _ in range(dp_size)]
    load = [0] * dp_size
    for i in order:
        r = min(range(dp_size), key=lambda k: (load[k], k))
        parts[r].append(i)
        load[r] += len(samples[i].tokens)
    return [sorted(p) for p in parts]
