"""Decode attention on CUDA in one Triton kernel per layer: RoPE, the cache write and the attention.

With ``scaled_dot_product_attention`` a decode step spends, per layer, a RoPE kernel for the new
queries and keys, an indexed copy of the new keys and values into the slot cache, and an attention
kernel over the whole padded length block under a mask: five to seven small kernels that each cost
a few microseconds however little they compute (a Qwen2.5-0.5B shape at batch 64 on an H100: ~33 us
of the ~60 us per layer, against ~26 us for the four weight matrices). PyTorch also picks cuDNN's
attention there, whose choice follows a process-wide flag that the trainer turns off around its
passes (see :mod:`agentrl.utils.attention`); a CUDA graph captured meanwhile would keep the other
kernel, so captures had to wait for the flag, and steps ran eagerly while they waited.

This kernel does it all in one launch, for each (request, KV head): apply RoPE to the query heads
that share the KV head and to the new key, store the new key and value at the request's position,
and attend over the request's own positions only (no mask, nothing read past them), with the new
token taken from registers. Long contexts at small batch split the positions over several programs
and a second small kernel merges their partial softmaxes (flash-decoding).

Triton compiles it on first use. :func:`unsupported` says why it cannot serve a model (no CUDA, no
Triton, a head size that is not a power of two of at least 32); the engine then keeps SDPA.
``TRITON_INTERPRET=1`` runs the same kernel on the CPU (slowly), which is how its logic is tested
without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

try:
    import triton
    import triton.language as tl
except Exception as _exc:  # ImportError, or a broken install
    triton = tl = None
    _IMPORT_ERROR: Exception | None = _exc
else:
    _IMPORT_ERROR = None

log = logging.getLogger(__name__)

BLOCK_N = 64
"""Cached positions per loop iteration."""
_MIN_POSITIONS_PER_SPLIT = 256


def interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable() -> str | None:
    """Why the kernel cannot run in this process, or None (Triton imports)."""
    if _IMPORT_ERROR is not None:
        return f"Triton is not importable ({_IMPORT_ERROR!r})"
    return None


def unsupported(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the kernel cannot serve a model on ``device`` in ``dtype`` with heads of ``head_dim``, or
    None. On the first call for a device and dtype the kernel is compiled and checked against
    :func:`reference` (a few seconds)."""
    device = torch.device(device)
    if device.type != "cuda" and not (device.type == "cpu" and interpreted()):
        return f"the Triton decode kernel runs on CUDA; the model is on {device}"
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"the Triton decode kernel takes bfloat16, float16 or float32, not {dtype}"
    if head_dim < 32 or head_dim & (head_dim - 1):
        return f"the Triton decode kernel needs a power-of-two head size of at least 32; this model's is {head_dim}"
    return unavailable() or _self_check(device, dtype)


@functools.lru_cache(maxsize=8)
def _self_check(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the kernel once (with and without splitting the positions) against :func:`reference`."""
    g = torch.Generator().manual_seed(0)
    b, heads, kv_heads, d, max_len, length = 3, 6, 2, 64, 640, 600

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    try:
        for splits in (1, 3):
            q, k, v = rand(b, heads, d), rand(b, kv_heads, d), rand(b, kv_heads, d)
            caches = rand(2, b, kv_heads, max_len, d)
            positions = torch.tensor([length - 1, 5, max_len - 1], device=device)  # the last: a padding row
            angles = torch.arange(max_len, device=device)[:, None] * torch.linspace(1e-3, 1, d // 2, device=device)
            cos, sin = angles.cos().repeat(1, 2).to(dtype), angles.sin().repeat(1, 2).to(dtype)
            want_caches = caches.clone()
            want = reference(q, k, v, want_caches[0], want_caches[1], positions, cos, sin, length, d**-0.5,
                             skip_at=max_len - 1)
            got = decode_attention(q, k, v, caches[0], caches[1], positions, cos, sin, length, d**-0.5, splits=splits,
                                   skip_at=max_len - 1)
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            err = max((got.float() - want.float()).abs().max().item(),
                      (caches.float() - want_caches.float()).abs().max().item())
            if not err <= tol:
                return f"the Triton decode kernel disagrees with the reference (max error {err:.3g}, splits {splits})"
    except Exception as exc:  # a compiler or driver problem: say so, the engine keeps SDPA
        log.warning("Triton decode kernel unusable on %s: %r", device, exc)
        return f"the Triton decode kernel failed on {device} ({exc!r})"
    return None


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, length: int,
              scale: float, skip_at: int = -1) -> torch.Tensor:
    """What :func:`decode_attention` computes, in plain PyTorch (float32 math, one row at a time)."""
    b, heads, d = q.shape
    kv_heads, half = k.shape[1], d // 2
    group = heads // kv_heads
    out = torch.empty_like(q)
    for row, p in enumerate(positions.tolist()):
        c, s = cos[p].float(), sin[p].float()

        def rope(x: torch.Tensor, c: torch.Tensor = c, s: torch.Tensor = s) -> torch.Tensor:
            x = x.float()
            return torch.cat((x[..., :half] * c[:half] - x[..., half:] * s[:half],
                              x[..., half:] * c[half:] + x[..., :half] * s[half:]), -1).to(q.dtype)

        new_k = rope(k[row])
        n = 0 if p == skip_at else min(p, length)
        keys = torch.cat((k_cache[row, :, :n], new_k[:, None]), 1).float()  # [Hkv, n + 1, D]
        values = torch.cat((v_cache[row, :, :n], v[row][:, None]), 1).float()
        qg = rope(q[row]).float().view(kv_heads, group, d)
        w = torch.softmax(qg @ keys.transpose(1, 2) * scale, -1)
        out[row] = (w @ values).reshape(heads, d).to(q.dtype)
        k_cache[row, :, p] = new_k
        v_cache[row, :, p] = v[row]
    return out


def splits_for(rows: int, kv_heads: int, length: int, processors: int) -> int:
    """Programs per (row, KV head): where the batch alone leaves over half of the streaming
    multiprocessors idle, enough to give each one, with at least ``_MIN_POSITIONS_PER_SPLIT``
    positions per program."""
    programs = rows * kv_heads
    if 2 * programs > processors or length < 2 * _MIN_POSITIONS_PER_SPLIT:
        return 1
    return max(1, min(-(-processors // programs), length // _MIN_POSITIONS_PER_SPLIT, 16))


def graph_splits(rows: int, kv_heads: int, length: int, device: torch.device) -> int:
    """:func:`splits_for` on ``device``, rounded down to a power of two. A CUDA graph of the decode
    step is keyed by its split count, not by its length (each row reads its own positions at run
    time), so a handful of graphs per batch size serve every length.

    Example::

        >>> graph_splits(1, 2, 300, torch.device("cpu")), graph_splits(64, 2, 4096, torch.device("cpu"))
        (1, 1)
    """
    if device.type != "cuda":
        return 1
    s = splits_for(rows, kv_heads, length, _processors(device.index if device.index is not None else torch.cuda.current_device()))
    return 1 << (s.bit_length() - 1)


@functools.lru_cache(maxsize=8)
def _processors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     length: int, scale: float, *, splits: int | None = None, skip_at: int = -1) -> torch.Tensor:
    """One decode step of attention for rows ``[0, B)``, writing the new keys/values into the cache.

    ``q`` [B, H, D], ``k``/``v`` [B, Hkv, D]: the step's projections before RoPE (any row and head
    strides, D contiguous; e.g. views of one fused q/k/v matmul). ``k_cache``/``v_cache``
    [slots, Hkv, max_len, D] (D contiguous): one layer of the slot cache; row ``b`` is slot ``b``.
    ``positions`` [B] int64: row ``b``'s new token sits at ``positions[b]``; it attends to its cached
    positions ``[0, min(positions[b], length))`` and to itself. ``cos``/``sin`` [max_len, D]: the
    RoPE tables by position (each half repeated, as Hugging Face builds them). Returns [B, H, D] in
    ``q``'s dtype. Traceable into a CUDA graph (no host syncs). ``splits``: programs per (row, KV
    head) over the positions (default: :func:`splits_for`). A row at position ``skip_at`` (the
    padding rows of a CUDA graph's batch bucket) reads no cached position: it attends to itself only,
    so that ``length`` can be the whole cache without padding rows streaming it."""
    b, heads, d = q.shape
    kv_heads = k.shape[1]
    if heads % kv_heads or k.shape != (b, kv_heads, d) or v.shape != k.shape:
        raise ValueError(f"q [B, H, D] and k/v [B, Hkv, D] with H a multiple of Hkv; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k_cache.shape[1] != kv_heads or k_cache.shape[3] != d or v_cache.shape != k_cache.shape or k_cache.shape[0] < b:
        raise ValueError(f"caches must be [slots >= {b}, {kv_heads}, max_len, {d}]; got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    elsewhere = [t.device for t in (k, v, k_cache, v_cache, positions, cos, sin) if t.device != q.device]
    if elsewhere:
        raise ValueError(f"every tensor must be on q's device {q.device}; found {elsewhere[0]}")
    if any(t.stride(-1) != 1 for t in (q, k, v, k_cache, v_cache, cos, sin)):
        raise ValueError("the last dimension of q, k, v, the caches and the RoPE tables must be contiguous")
    if not 0 < length <= k_cache.shape[2]:
        raise ValueError(f"length must be in [1, {k_cache.shape[2]}]; got {length}")
    group = heads // kv_heads
    if splits is None:
        splits = 1 if q.device.type != "cuda" else splits_for(b, kv_heads, length, _processors(q.device.index or 0))
    out = torch.empty(b, heads, d, dtype=q.dtype, device=q.device)
    block_g = max(16, triton.next_power_of_2(group))
    part = (torch.empty(b, kv_heads, splits, block_g, d + 2, dtype=torch.float32, device=q.device)
            if splits > 1 else out)  # unused when splits == 1
    with _on(q.device):
        _decode[(b, kv_heads, splits)](
            q, k, v, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            k_cache, v_cache, *k_cache.stride()[:3], *v_cache.stride()[:3],
            cos, sin, cos.stride(0), positions, out, out.stride(0), out.stride(1), part, length, skip_at,
            float(scale), G=group, HALF=d // 2, BLOCK_G=block_g, BLOCK_N=BLOCK_N, SPLITS=splits,
            IEEE=q.dtype == torch.float32, num_warps=4,
        )
        if splits > 1:
            _merge[(b, kv_heads)](part, out, out.stride(0), out.stride(1), G=group, D=d, BLOCK_G=block_g,
                                  SPLITS=splits, num_warps=4)
    return out


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' (an engine on ``cuda:1``)."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


if triton is not None:  # the kernels (module level: Triton resolves the helpers they call by name)

    @triton.jit
    def _rope(x1, x2, c1, c2, s1, s2):
        return x1 * c1 - x2 * s1, x2 * c2 + x1 * s2

    @triton.jit
    def _decode(q_ptr, k_ptr, v_ptr, sq_b, sq_h, sk_b, sk_h, sv_b, sv_h,
                kc_ptr, vc_ptr, skc_s, skc_h, skc_l, svc_s, svc_h, svc_l,
                cos_ptr, sin_ptr, s_cs, pos_ptr, o_ptr, so_b, so_h, part_ptr, length, skip_at, scale,
                G: tl.constexpr, HALF: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                SPLITS: tl.constexpr, IEEE: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        split = tl.program_id(2)
        dt = kc_ptr.dtype.element_ty
        precision: tl.constexpr = "ieee" if IEEE else "tf32"
        p = tl.load(pos_ptr + row)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, HALF)
        gmask = g < G
        # RoPE tables at this row's position, in halves (x1 * c1 - x2 * s1, x2 * c2 + x1 * s2)
        c1 = tl.load(cos_ptr + p * s_cs + d).to(tl.float32)
        c2 = tl.load(cos_ptr + p * s_cs + HALF + d).to(tl.float32)
        s1 = tl.load(sin_ptr + p * s_cs + d).to(tl.float32)
        s2 = tl.load(sin_ptr + p * s_cs + HALF + d).to(tl.float32)
        # the query heads of this KV head, and the new key / value, rounded to the cache dtype
        q_at = q_ptr + row * sq_b + (head * G + g)[:, None] * sq_h + d[None, :]
        q1 = tl.load(q_at, mask=gmask[:, None], other=0.0).to(tl.float32)
        q2 = tl.load(q_at + HALF, mask=gmask[:, None], other=0.0).to(tl.float32)
        q1, q2 = _rope(q1, q2, c1[None, :], c2[None, :], s1[None, :], s2[None, :])
        q1 = q1.to(dt)
        q2 = q2.to(dt)
        k_at = k_ptr + row * sk_b + head * sk_h + d
        k1, k2 = _rope(tl.load(k_at).to(tl.float32), tl.load(k_at + HALF).to(tl.float32), c1, c2, s1, s2)
        k1 = k1.to(dt)
        k2 = k2.to(dt)
        v1 = tl.load(v_ptr + row * sv_b + head * sv_h + d).to(dt)
        v2 = tl.load(v_ptr + row * sv_b + head * sv_h + HALF + d).to(dt)
        kc_row = kc_ptr + row * skc_s + head * skc_h
        vc_row = vc_ptr + row * svc_s + head * svc_h
        first = split == 0
        if first:  # the new token: stored for later steps, attended from registers now
            tl.store(kc_row + p * skc_l + d, k1)
            tl.store(kc_row + p * skc_l + HALF + d, k2)
            tl.store(vc_row + p * svc_l + d, v1)
            tl.store(vc_row + p * svc_l + HALF + d, v2)
        own = (tl.sum(q1.to(tl.float32) * k1.to(tl.float32)[None, :], 1)
               + tl.sum(q2.to(tl.float32) * k2.to(tl.float32)[None, :], 1)) * scale  # [BLOCK_G]
        m = tl.where(first, own, float("-inf"))
        l_sum = tl.where(first, 1.0, 0.0) + tl.zeros([BLOCK_G], tl.float32)
        acc1 = tl.where(first, 1.0, 0.0) * v1.to(tl.float32)[None, :] + tl.zeros([BLOCK_G, HALF], tl.float32)
        acc2 = tl.where(first, 1.0, 0.0) * v2.to(tl.float32)[None, :] + tl.zeros([BLOCK_G, HALF], tl.float32)
        # this split's share of the cached positions [0, min(p, length))
        n_ctx = tl.where(p == skip_at, 0, tl.minimum(p, length))
        per = tl.cdiv(tl.cdiv(n_ctx, BLOCK_N), SPLITS) * BLOCK_N
        start = split * per
        end = tl.minimum(start + per, n_ctx)
        n = tl.arange(0, BLOCK_N)
        for base in range(start, end, BLOCK_N):
            pos = base + n
            live = pos < end
            kb1 = tl.load(kc_row + pos[:, None] * skc_l + d[None, :], mask=live[:, None], other=0.0)
            kb2 = tl.load(kc_row + pos[:, None] * skc_l + HALF + d[None, :], mask=live[:, None], other=0.0)
            s = (tl.dot(q1, tl.trans(kb1), input_precision=precision)
                 + tl.dot(q2, tl.trans(kb2), input_precision=precision)) * scale
            s = tl.where(live[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            w = tl.exp(s - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(w, 1)
            vb1 = tl.load(vc_row + pos[:, None] * svc_l + d[None, :], mask=live[:, None], other=0.0)
            vb2 = tl.load(vc_row + pos[:, None] * svc_l + HALF + d[None, :], mask=live[:, None], other=0.0)
            wd = w.to(dt)
            acc1 = acc1 * alpha[:, None] + tl.dot(wd, vb1, input_precision=precision)
            acc2 = acc2 * alpha[:, None] + tl.dot(wd, vb2, input_precision=precision)
            m = m_new
        if SPLITS == 1:
            o_at = o_ptr + row * so_b + (head * G + g)[:, None] * so_h + d[None, :]
            inv = 1.0 / l_sum
            tl.store(o_at, (acc1 * inv[:, None]).to(o_ptr.dtype.element_ty), mask=gmask[:, None])
            tl.store(o_at + HALF, (acc2 * inv[:, None]).to(o_ptr.dtype.element_ty), mask=gmask[:, None])
        else:  # part [B, Hkv, SPLITS, BLOCK_G, 2 * HALF + 2]: unnormalised sums, then max and sum of weights
            width = 2 * HALF + 2
            at = part_ptr + (((row * tl.num_programs(1) + head) * SPLITS + split) * BLOCK_G + g) * width
            tl.store(at[:, None] + d[None, :], acc1)
            tl.store(at[:, None] + HALF + d[None, :], acc2)
            tl.store(at + 2 * HALF, m)
            tl.store(at + 2 * HALF + 1, l_sum)

    @triton.jit
    def _merge(part_ptr, o_ptr, so_b, so_h, G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
               SPLITS: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        width = D + 2
        base = part_ptr + ((row * tl.num_programs(1) + head) * SPLITS * BLOCK_G + g) * width
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for s in range(SPLITS):  # split 0 holds the new token: its maximum is finite
            m = tl.maximum(m, tl.load(base + s * BLOCK_G * width + D))
        total = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        for s in range(SPLITS):
            at = base + s * BLOCK_G * width
            w = tl.exp(tl.load(at + D) - m)  # 0 for a split that had no positions (its maximum is -inf)
            total += w * tl.load(at + D + 1)
            acc += w[:, None] * tl.load(at[:, None] + d[None, :])
        o_at = o_ptr + row * so_b + (head * G + g)[:, None] * so_h + d[None, :]
        tl.store(o_at, (acc / total[:, None]).to(o_ptr.dtype.element_ty), mask=(g < G)[:, None])
