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


class _CudnnSwitch:
    """The process-wide cuDNN-attention flag, shared between threads that want it off (prefills,
    training passes) and threads that need it as the user set it (capturing decode graphs).

    Holders of one kind run together; a holder of the other kind waits until they have all left
    (or, asked not to wait, goes without), and while it waits no new holder of the first kind
    enters (neither side starves). A thread that already holds the switch enters again without
    waiting."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._off: bool | None = None  # the kind held now (None: nobody holds it)
        self._holders = 0
        self._waiting = {True: 0, False: 0}
        self._user_flag = True
        self._last: bool | None = None  # the kind that held it last
        self._local = threading.local()

    def _must_wait(self, off: bool) -> bool:
        if self._holders:  # the other kind holds it, or waits for this kind to finish
            return self._off is not off or self._waiting[not off] > 0
        return self._waiting[not off] > 0 and self._last is off  # free: the other kind's turn

    @contextlib.contextmanager
    def hold(self, off: bool, wait: bool = True) -> Iterator[bool]:
        """Hold the switch for the block; with ``wait=False``, yield False at once (holding
        nothing) where it would have to wait."""
        entered = self._enter(off, wait)
        try:
            yield entered
        finally:
            if entered:
                self._exit()

    def _enter(self, off: bool, wait: bool) -> bool:
        depth = getattr(self._local, "depth", 0)
        with self._cv:
            if depth == 0:
                if not wait and self._must_wait(off):
                    return False
                self._waiting[off] += 1
                while self._must_wait(off):
                    self._cv.wait()
                self._waiting[off] -= 1
            if self._holders == 0:
                self._user_flag = torch.backends.cuda.cudnn_sdp_enabled()
                self._off = self._last = off
                if off:
                    torch.backends.cuda.enable_cudnn_sdp(False)
            self._holders += 1
        self._local.depth = depth + 1
        return True

    def _exit(self) -> None:
        self._local.depth -= 1
        with self._cv:
            self._holders -= 1
            if self._holders == 0:
                torch.backends.cuda.enable_cudnn_sdp(self._user_flag)
                self._off = None
            self._cv.notify_all()


_CUDNN = _CudnnSwitch()


def no_cudnn_attention(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Keep ``scaled_dot_product_attention`` off cuDNN's kernel on CUDA while the block runs.

    cuDNN's attention, which PyTorch prefers on Hopper GPUs, builds a graph for every new shape,
    about 2 ms of CPU per call on an H100, while multi-turn prefills and training micro-batches
    rarely repeat their shapes; SDPA then picks the flash or memory-efficient kernel instead. The
    backend flag is process-wide: holders run together, and a thread in
    :func:`attention_kernels_as_set` waits for them (see ``_CudnnSwitch``). A no-op off CUDA.

    Example::

        >>> with no_cudnn_attention("cpu"):
        ...     sdpa_grouped(torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)).shape
        torch.Size([1, 2, 3, 4])
    """
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return _CUDNN.hold(off=True)


def attention_kernels_as_set(device: torch.device | str, *, wait: bool = True) -> contextlib.AbstractContextManager:
    """Run the block with the SDPA backends as the user set them: wait until no thread holds
    :func:`no_cudnn_attention`, and keep new holders out meanwhile. For work whose kernel choice
    lasts (a CUDA graph keeps the kernels it was captured with). Yields True; with ``wait=False``
    it yields False at once, holding nothing, while another thread holds cuDNN off. Off CUDA it
    holds nothing and yields True."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext(True)
    return _CUDNN.hold(off=False, wait=wait)
