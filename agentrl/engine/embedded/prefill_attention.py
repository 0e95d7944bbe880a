"""Attention of a packed, variable-length batch over the slot cache: prefills and decode rows in one kernel.

An engine step packs the new tokens of many requests into one forward pass: the one input token
of every decoding request and the prompt tokens (or a chunk of them) of newly admitted ones. Each
request is a *sequence* of ``q_len`` consecutive new tokens at positions ``[start, start + q_len)``
of its slot, whose keys and values (RoPE applied) have already been written into the slot cache;
its token at position ``p`` attends to positions ``[0, p]``. The keys/values of positions below
``prefix_len`` may sit in another slot ``prefix_slot``: the n samples of one prompt, prefilled in
the same step, read the shared prompt from the slot of the one sample that computes it.

:func:`attention` runs this as one Triton kernel (FlashAttention's online softmax, Dao et al. 2022)
over a table of *tiles*: a tile is up to ``block_t`` consecutive tokens of one sequence for one KV
head, and its rows are those tokens times the query heads that share the KV head (grouped-query
attention, Ainslie et al. 2023), so the keys and values are read once per tile for all of them. A
decode row is a sequence of one token. The grid is a fixed number of tiles, unused ones marked
``-1``, so a step of a given token bucket is capturable in a CUDA graph whatever its requests.

:func:`reference` computes the same in plain PyTorch (one ``scaled_dot_product_attention`` per
sequence); the engine uses it where the kernel cannot run (the CPU without Triton's interpreter).

Example::

    >>> import numpy as np
    >>> seqs = np.array([[0, 3, 0, 0, 0, 0], [3, 1, 7, 1, 1, 0]])  # a 3-token prompt, a decode row at position 7
    >>> tile_table(seqs[:, 1], block_t=2).tolist()
    [[0, 0], [0, 2], [1, 0]]
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from agentrl.engine.embedded import gpu_attention
from agentrl.engine.embedded.gpu_attention import interpreted, tl, triton, unavailable

log = logging.getLogger(__name__)

SEQ_FIELDS = 6
"""Columns of a sequence row: first packed token, q_len, start position, slot, prefix slot, prefix length."""
BLOCK_N = 64
"""Key positions per loop iteration."""
TILE_ROWS = 128
"""Rows of a tile (tokens times the query heads of one KV head, padded to a power of two)."""


def group_rows(group: int) -> int:
    """Query heads per KV head, padded to a power of two."""
    return 1 << max(0, (group - 1).bit_length())


def block_tokens(group: int) -> int:
    """Tokens per tile for ``group`` query heads per KV head (``TILE_ROWS`` rows in all)."""
    return max(1, TILE_ROWS // group_rows(group))


def tile_table(q_lens: np.ndarray, block_t: int) -> np.ndarray:
    """Tiles of sequences with ``q_lens`` new tokens: ``[tiles, 2]`` int64 rows (sequence, first token),
    in sequence order."""
    q_lens = np.asarray(q_lens, dtype=np.int64)
    counts = -(-q_lens // block_t)
    seq = np.repeat(np.arange(len(q_lens), dtype=np.int64), counts)
    first = np.arange(len(seq), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([seq, first * block_t], axis=1)


def unsupported(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why :func:`attention` cannot serve a model on ``device`` in ``dtype`` with heads of ``head_dim``,
    or None. The first call for a device and dtype compiles the kernel and checks it against
    :func:`reference`."""
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        return f"the Triton prefill kernel runs on CUDA; the model is on {device}"
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"the Triton prefill kernel takes bfloat16, float16 or float32, not {dtype}"
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"the Triton prefill kernel needs a power-of-two head size of at least 16; this model's is {head_dim}"
    return unavailable() or _self_check(device, dtype)


@functools.lru_cache(maxsize=8)
def _self_check(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the kernel once on a mixed batch (a prompt, a chunk over a cached prefix, a prompt sharing
    another's prefix, decode rows) against :func:`reference`."""
    g = torch.Generator().manual_seed(0)
    heads, kv_heads, d, slots, max_len = 6, 2, 32, 5, 160
    seqs = np.array([[0, 70, 0, 0, 0, 0], [70, 20, 30, 1, 1, 0], [90, 5, 65, 2, 0, 65],
                     [95, 1, 100, 3, 3, 0], [96, 1, 3, 4, 4, 0]], dtype=np.int64)
    try:
        q = torch.randn(97, heads, d, generator=g).to(device, dtype)
        caches = torch.randn(2, slots, kv_heads, max_len, d, generator=g).to(device, dtype)
        want = reference(q, caches[0], caches[1], seqs, d**-0.5)
        got = attention(q, caches[0], caches[1], torch.from_numpy(seqs).to(device),
                        torch.from_numpy(tile_table(seqs[:, 1], block_tokens(heads // kv_heads))).to(device), d**-0.5)
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        err = (got.float() - want.float()).abs().max().item()
        if not err <= tol:
            return f"the Triton prefill kernel disagrees with the reference (max error {err:.3g})"
    except Exception as exc:  # a compiler or driver problem: say so, the engine prefills the other way
        log.warning("Triton prefill kernel unusable on %s: %r", device, exc)
        return f"the Triton prefill kernel failed on {device} ({exc!r})"
    return None


def reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqs: np.ndarray,
              scale: float) -> torch.Tensor:
    """What :func:`attention` computes, one ``scaled_dot_product_attention`` call per sequence.
    ``seqs`` [R, 6] on the host; rows of ``q`` outside every sequence come back as zeros."""
    from agentrl.utils.attention import sdpa_grouped

    out = torch.zeros_like(q)
    for q_start, q_len, start, slot, pslot, plen in np.asarray(seqs).tolist():
        end = start + q_len
        keys = torch.cat((k_cache[pslot, :, :plen], k_cache[slot, :, plen:end]), 1)  # [Hkv, end, D]
        values = torch.cat((v_cache[pslot, :, :plen], v_cache[slot, :, plen:end]), 1)
        qs = q[q_start : q_start + q_len].transpose(0, 1)  # [H, q_len, D]
        mask = torch.arange(end, device=q.device)[None] <= torch.arange(start, end, device=q.device)[:, None]
        o = sdpa_grouped(qs[None], keys[None], values[None], mask=mask, scale=scale)[0]
        out[q_start : q_start + q_len] = o.transpose(0, 1)
    return out


def attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqs: torch.Tensor,
              tiles: torch.Tensor, scale: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of the packed tokens ``q`` [T, H, D] (RoPE applied) over the slot cache.

    ``k_cache``/``v_cache`` [slots, Hkv, max_len, D]: one layer of the cache, the step's new keys and
    values already written. ``seqs`` [R, 6] int64 on the device (:data:`SEQ_FIELDS`); ``tiles``
    [NT, 2] int64 (:func:`tile_table` with ``block_tokens(H // Hkv)``, rows of sequence ``-1``
    skipped). Returns ``out`` [T, H, D]; rows of no sequence are left as they were. No host syncs
    (CUDA-graph safe)."""
    t, heads, d = q.shape
    kv_heads = k_cache.shape[1]
    if heads % kv_heads or k_cache.shape[3] != d or v_cache.shape != k_cache.shape:
        raise ValueError(f"q [T, H, D] and caches [slots, Hkv, max_len, D] with H a multiple of Hkv; got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if seqs.dtype != torch.int64 or tiles.dtype != torch.int64 or seqs.shape[1:] != (SEQ_FIELDS,) or tiles.shape[1:] != (2,):
        raise ValueError(f"seqs [R, {SEQ_FIELDS}] and tiles [NT, 2] must be int64; got {tuple(seqs.shape)} "
                         f"{seqs.dtype}, {tuple(tiles.shape)} {tiles.dtype}")
    if any(x.stride(-1) != 1 for x in (q, k_cache, v_cache)):
        raise ValueError("the last dimension of q and the caches must be contiguous")
    group = heads // kv_heads
    if out is None:
        out = torch.empty(t, heads, d, dtype=q.dtype, device=q.device)
    if tiles.shape[0] == 0:
        return out
    with gpu_attention._on(q.device):
        _varlen[(tiles.shape[0], kv_heads)](
            q, q.stride(0), q.stride(1), k_cache, v_cache, *k_cache.stride()[:3], *v_cache.stride()[:3],
            out, out.stride(0), out.stride(1), tiles, seqs, float(scale) * 1.4426950408889634,
            G=group, GP=group_rows(group), D=d, BLOCK_T=block_tokens(group), BLOCK_N=BLOCK_N,
            IEEE=q.dtype == torch.float32, num_warps=8,
        )
    return out


if triton is not None:

    @triton.jit
    def _scan(q, qpos, m_i, l_i, acc, k_base, v_base, skc_l, svc_l, lo, hi, qk_scale,
              D: tl.constexpr, BLOCK_N: tl.constexpr, precision: tl.constexpr):
        """Online softmax of the tile's rows over key positions ``[lo, hi)`` of one slot."""
        n = tl.arange(0, BLOCK_N)
        d = tl.arange(0, D)
        for at in range(lo, hi, BLOCK_N):
            pos = (at + n).to(tl.int32)
            inside = pos < hi
            k = tl.load(k_base + (pos * skc_l)[:, None] + d[None, :], mask=inside[:, None], other=0.0)  # [N, D]
            s = tl.dot(q, tl.trans(k), input_precision=precision) * qk_scale  # log2 units
            s = tl.where((pos[None, :] <= qpos[:, None]) & inside[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + (pos * svc_l)[:, None] + d[None, :], mask=inside[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=precision)
            m_i = m_new
        return m_i, l_i, acc

    @triton.jit
    def _varlen(q_ptr, sq_t, sq_h, kc_ptr, vc_ptr, skc_s, skc_h, skc_l, svc_s, svc_h, svc_l,
                o_ptr, so_t, so_h, tiles_ptr, seqs_ptr, qk_scale,
                G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
                IEEE: tl.constexpr):
        tile = tl.program_id(0)
        head = tl.program_id(1)
        seq = tl.load(tiles_ptr + 2 * tile)
        if seq >= 0:
            precision: tl.constexpr = "ieee" if IEEE else "tf32"
            t0 = tl.load(tiles_ptr + 2 * tile + 1)
            row_at = seqs_ptr + 6 * seq
            q_start = tl.load(row_at)
            q_len = tl.load(row_at + 1)
            start = tl.load(row_at + 2)
            slot = tl.load(row_at + 3)
            pslot = tl.load(row_at + 4)
            plen = tl.load(row_at + 5)
            r = tl.arange(0, BLOCK_T * GP)
            t = r // GP  # the row's token within the tile
            g = r % GP  # the row's query head within the group
            live = (t0 + t < q_len) & (g < G)
            d = tl.arange(0, D)
            q_base = q_ptr + (q_start + t0) * sq_t + head * G * sq_h
            q = tl.load(q_base + (t * sq_t + g * sq_h)[:, None] + d[None, :], mask=live[:, None], other=0.0)
            qpos = (start + t0 + t).to(tl.int32)  # [M]; rows past the sequence see every key of the tile (never stored)
            end = start + tl.minimum(t0 + BLOCK_T, q_len)  # keys [0, end)
            shared = tl.minimum(plen, end)
            m_i = tl.full([BLOCK_T * GP], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_T * GP], tl.float32)
            acc = tl.zeros([BLOCK_T * GP, D], tl.float32)
            if shared > 0:  # the prompt prefix another request of the step computes
                m_i, l_i, acc = _scan(q, qpos, m_i, l_i, acc, kc_ptr + pslot * skc_s + head * skc_h,
                                      vc_ptr + pslot * svc_s + head * svc_h, skc_l, svc_l, 0, shared, qk_scale,
                                      D, BLOCK_N, precision)
            m_i, l_i, acc = _scan(q, qpos, m_i, l_i, acc, kc_ptr + slot * skc_s + head * skc_h,
                                  vc_ptr + slot * svc_s + head * svc_h, skc_l, svc_l, shared, end, qk_scale,
                                  D, BLOCK_N, precision)
            acc = acc / l_i[:, None]
            o_base = o_ptr + (q_start + t0) * so_t + head * G * so_h
            tl.store(o_base + (t * so_t + g * so_h)[:, None] + d[None, :], acc.to(o_ptr.dtype.element_ty),
                     mask=live[:, None])
