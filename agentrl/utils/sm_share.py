"""Share one GPU between a trainer and a decoding engine: confine the trainer to part of the SMs.

A decode step is a few hundred small kernels; while a trainer's large kernels hold every SM, each
of them waits for SMs to drain, and a step that takes ~2 ms alone takes tens of milliseconds.
Stream priorities do not fix it (a running block is never pre-empted). A CUDA green context does:
kernels launched on its stream run only on the SMs it was given, so the kernels of every other
stream (the engine's) always find SMs free. ``bench/gpu_sharing.py`` measures the effect.

Example::

    stream = confined_stream("cuda:0", 88)   # the trainer thread's kernels use 88 of the SMs
    torch.cuda.set_stream(stream)
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_KEEP: dict[tuple[int, int], Any] = {}  # green contexts must outlive their streams
_LOCK = threading.Lock()


def sm_count(device: torch.device | str) -> int:
    """Streaming multiprocessors of a CUDA device."""
    return int(torch.cuda.get_device_properties(torch.device(device)).multi_processor_count)


def confined_stream(device: torch.device | str, num_sms: int) -> torch.cuda.Stream:
    """A CUDA stream whose kernels run on ``num_sms`` SMs of ``device`` (a CUDA green context;
    the driver rounds the count up to its SM granularity). One context per (device, count) is
    created and kept for the life of the process; all of the device's SMs give a plain stream.

    Raises ``ValueError`` for a non-CUDA device or a count outside ``1 .. SMs of the device``,
    and ``RuntimeError`` where PyTorch or the driver has no green contexts (PyTorch built with
    CUDA >= 12.8 and a driver as new are needed)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"confining kernels to SMs needs a CUDA device; got {device}")
    index = torch.cuda.current_device() if device.index is None else device.index
    total = sm_count(torch.device("cuda", index))
    if not 1 <= int(num_sms) <= total:
        raise ValueError(f"SM count must be in 1..{total} (the SMs of cuda:{index}); got {num_sms}")
    if int(num_sms) == total:
        return torch.cuda.Stream(device=torch.device("cuda", index))
    green = getattr(torch.cuda, "green_contexts", None)
    cls = getattr(green, "GreenContext", None)
    if cls is None or not getattr(green, "SUPPORTED", False) or not hasattr(cls, "Stream"):
        raise RuntimeError(f"PyTorch {torch.__version__} has no CUDA green contexts with streams, which "
                           "confining kernels to SMs needs (a build with CUDA >= 12.8 and torch >= 2.11)")
    with _LOCK:
        key = (index, int(num_sms))
        context = _KEEP.get(key)
        if context is None:
            try:
                context = cls.create(num_sms=int(num_sms), device_id=index)
            except RuntimeError as e:
                raise RuntimeError(f"could not create a green context of {num_sms} SMs on cuda:{index} "
                                   f"(a CUDA driver >= 12.8 is needed): {e}") from e
            _KEEP[key] = context
    return context.Stream()
