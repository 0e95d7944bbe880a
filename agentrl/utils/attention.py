"""Attention with grouped key/value heads on any torch version's fast kernels."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def sdpa_grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
                 causal: bool = False, scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """``scaled_dot_product_attention`` with fewer key/value heads than query heads.

    ``q [b, H, s, d]``, ``k``/``v`` ``[b, Hkv, L, d]`` with ``H % Hkv == 0``. The key/value heads are
    expanded to the query heads explicitly rather than with ``enable_gqa``, which some kernels of
    some torch versions refuse; SDPA then silently falls back to the math kernel, which writes the
    whole ``[b, H, s, L]`` score matrix. The copies are ``H / Hkv`` times the ``[b, Hkv, L, d]``
    tensors.

    Example::

        >>> q, kv = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
        >>> sdpa_grouped(q, kv, kv, causal=True).shape
        torch.Size([1, 4, 3, 8])
    """
    if k.shape[1] != q.shape[1]:
        b, hkv, length, d = k.shape
        rep = q.shape[1] // hkv
        k = k[:, :, None].expand(b, hkv, rep, length, d).reshape(b, hkv * rep, length, d)
        v = v[:, :, None].expand(b, hkv, rep, length, d).reshape(b, hkv * rep, length, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scale)


_cudnn_lock = threading.Lock()
_cudnn_holders = 0
_cudnn_was_enabled = True


@contextlib.contextmanager
def no_cudnn_attention(device: torch.device | str) -> Iterator[None]:
    """Keep ``scaled_dot_product_attention`` off cuDNN's kernel on CUDA while the block runs.

    cuDNN's attention, which PyTorch prefers on Hopper GPUs, builds a graph for every new shape,
    about 2 ms of CPU per call on an H100, while a multi-turn prefill rarely repeats its shape;
    SDPA then picks the flash or memory-efficient kernel instead. The backend flag is process-wide:
    every thread attending meanwhile (a trainer beside the engine's worker) runs without cuDNN too,
    and several threads may hold this at once: the first to enter turns cuDNN off, the last to
    leave restores the flag as it found it. A no-op off CUDA.

    Example::

        >>> with no_cudnn_attention("cpu"):
        ...     sdpa_grouped(torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)).shape
        torch.Size([1, 2, 3, 4])
    """
    global _cudnn_holders, _cudnn_was_enabled
    if torch.device(device).type != "cuda":
        yield
        return
    with _cudnn_lock:
        if _cudnn_holders == 0:
            _cudnn_was_enabled = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)
        _cudnn_holders += 1
    try:
        yield
    finally:
        with _cudnn_lock:
            _cudnn_holders -= 1
            if _cudnn_holders == 0:
                torch.backends.cuda.enable_cudnn_sdp(_cudnn_was_enabled)
