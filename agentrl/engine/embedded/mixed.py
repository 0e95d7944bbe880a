"""Mixed engine steps: the prompt tokens of new requests and the decode rows of running ones in one forward.

A *mixed step* packs, in this order, the one input token of every running request (slots ``0 .. n-1``,
a sequence of one token each) and the new tokens of some prefills (:class:`Part`: a whole prompt,
or a chunk of one, past whatever its slot already holds), and runs one forward pass over them:
the projections and MLPs see one matrix of all tokens, and the attention of every sequence reads
its slot cache through :mod:`~agentrl.engine.embedded.prefill_attention`. It returns the logits of
the decode rows and of the last token of every prompt that ends in this step.

:func:`pack` lays a step out on the host (one int64 array, copied to the device at once);
:func:`forward` runs it over :class:`~agentrl.engine.embedded.fast_model.FastLM`'s own layers.
On CUDA the runner pads a step to a token bucket (:func:`token_bucket`) and replays a CUDA graph
per bucket; padding tokens write to the cache's scratch slot and belong to no sequence (their rows
compute garbage that no other row reads: every operation but attention works row by row).

Example::

    >>> import numpy as np
    >>> step = pack(np.array([5, 6]), np.array([10, 3]), [Part(2, np.array([7, 8, 9]), 0, 2, 0, True)], block_t=16)
    >>> step.tokens.tolist(), step.select.tolist()
    ([5, 6, 7, 8, 9], [0, 1, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from agentrl.engine.embedded import prefill_attention

GRAPH_TOKENS = 2048
"""Largest token bucket replayed from a CUDA graph; larger steps have enough work to run eagerly."""


@dataclass
class Part:
    """The new tokens of one prefill in a step."""

    slot: int
    tokens: np.ndarray
    """[q] int64: the prompt's tokens at positions ``[start, start + q)``."""
    start: int
    prefix_slot: int
    """Slot holding the keys/values of positions ``[0, prefix_len)`` (a prompt shared with another
    request of the step); the rest, up to ``start``, is in ``slot`` already."""
    prefix_len: int
    sample: bool
    """The prompt ends here: its next token is sampled in this step."""


def token_bucket(n: int) -> int:
    """Padded token count of a mixed step: multiples of 64 up to 512, of 128 up to 1024, then of 256."""
    step = 64 if n <= 512 else 128 if n <= 1024 else 256
    return max(step, -(-n // step) * step)


@dataclass
class Packed:
    """One mixed step laid out for the device (host arrays)."""

    tokens: np.ndarray  # [T] int64
    positions: np.ndarray  # [T]
    slots: np.ndarray  # [T]
    select: np.ndarray  # [S] rows whose logits are sampled: decode rows, then prompts that end
    seqs: np.ndarray  # [R, 6] prefill_attention.SEQ_FIELDS
    tiles: np.ndarray  # [NT, 2]


def pack(tokens: np.ndarray, positions: np.ndarray, parts: list[Part], block_t: int) -> Packed:
    """Lay out decode rows (``tokens``/``positions`` of slots ``0 .. n-1``) and ``parts``."""
    n = len(tokens)
    lens = np.array([len(p.tokens) for p in parts], dtype=np.int64)
    first = n + np.cumsum(lens) - lens  # each part's first packed row
    rows = np.arange(n, dtype=np.int64)
    seqs = np.empty((n + len(parts), prefill_attention.SEQ_FIELDS), dtype=np.int64)
    seqs[:n] = np.stack([rows, np.ones(n, np.int64), positions, rows, rows, np.zeros(n, np.int64)], axis=1)
    for j, p in enumerate(parts):
        seqs[n + j] = (first[j], lens[j], p.start, p.slot, p.prefix_slot, p.prefix_len)
    tiles = prefill_attention.tile_table(seqs[:, 1], block_t)
    if len(tiles) > 1:  # the longest attention first, so that no long tile starts last
        work = seqs[tiles[:, 0], 2] + tiles[:, 1]
        tiles = tiles[np.argsort(-work, kind="stable")]
    ends = [first[j] + lens[j] - 1 for j, p in enumerate(parts) if p.sample]
    return Packed(
        tokens=np.concatenate([np.asarray(tokens, np.int64), *[p.tokens for p in parts]]),
        positions=np.concatenate([np.asarray(positions, np.int64), *[np.arange(p.start, p.start + len(p.tokens)) for p in parts]]),
        slots=np.concatenate([rows, *[np.full(len(p.tokens), p.slot, np.int64) for p in parts]]),
        select=np.concatenate([rows, np.asarray(ends, np.int64)]),
        seqs=seqs, tiles=tiles,
    )


def forward(lm, kv, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, select: torch.Tensor,
            seqs: torch.Tensor, tiles: torch.Tensor, *, kernel: bool, seqs_host: np.ndarray | None = None) -> torch.Tensor:
    """Logits [S, V] of the ``select`` rows of a packed step; writes every token's keys/values.

    ``kernel``: attention through the Triton kernel (traceable into a CUDA graph), else through
    :func:`prefill_attention.reference`, which reads ``seqs_host``."""
    if not kernel and seqs_host is None:
        raise ValueError("attention without the kernel reads the sequences on the host: give seqs_host")
    t = tokens.shape[0]
    hd = lm.n_heads * lm.head_dim
    x = F.embedding(tokens, lm.embed_w)  # [T, hidden]
    cos, sin = lm.cos[positions], lm.sin[positions]  # [T, D]
    widx = kv.write_index(slots, positions)

    def attend(layer: int, q, new_kv):
        kv.write(layer, widx, new_kv)
        k_cache, v_cache = kv.caches(layer)
        if q.stride(-1) != 1:
            q = q.contiguous()
        if kernel:
            o = prefill_attention.attention(q, k_cache, v_cache, seqs, tiles, lm.scale)
        else:
            assert seqs_host is not None  # checked on entry
            o = prefill_attention.reference(q, k_cache, v_cache, seqs_host, lm.scale)
        return o.view(t, hd)

    h = lm._layers(x, cos, sin, attend)
    return lm.logits(h.index_select(0, select))
