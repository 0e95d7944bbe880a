"""Attention with grouped key/value heads on any torch version's fast kernels."""

from __future__ import annotations

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
