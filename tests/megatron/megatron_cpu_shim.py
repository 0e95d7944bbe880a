"""Test-only: run megatron-core on a CPU-only torch build.

megatron-core assumes CUDA in a handful of places on the paths the tests use:
``torch.cuda.current_device()`` used as a device, ``.cuda()`` calls, tensors made with
``device="cuda"`` (optimizer flags, the pipeline schedule's token counter), ``param.type()``
compared with ``"torch.cuda.FloatTensor"``, a causal mask made on ``"cuda"``, the CUDA RNG
tracker in the unfused local attention and the CUDA RNG states saved by activation recompute. :func:`install` redirects exactly those to the CPU
and returns a function that undoes it. ``device="cuda"`` factories are redirected only inside
the megatron-core modules listed below (through a proxy for their ``torch`` global), so other
libraries in the process (transformers) are untouched.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import types
from collections.abc import Callable

import torch

_MODULES_WITH_CUDA_FACTORIES = (
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.utils",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.transformer.utils",
    "megatron.core.utils",
)
_FACTORIES = ("tensor", "zeros", "empty", "ones", "full", "arange")


def _cpu_device(kwargs: dict) -> dict:
    d = kwargs.get("device")
    if d is not None and str(d).startswith("cuda"):
        kwargs["device"] = "cpu"
    return kwargs


class _TorchOnCPU(types.ModuleType):
    """``torch`` with ``device="cuda"`` factories made on the CPU; everything else delegated."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        attr = getattr(torch, name)
        if name in _FACTORIES:
            return lambda *a, **k: attr(*a, **_cpu_device(k))
        return attr


class _NullStream:
    """``torch.cuda.current_stream()`` on the CPU: every wait is a no-op."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _NoRngTracker:
    def fork(self, name: str = "model-parallel-rng"):
        return contextlib.nullcontext()


def install() -> Callable[[], None]:
    """Redirect megatron-core's CUDA assumptions to the CPU; returns the undo function."""
    import megatron.core.fusions.fused_softmax as fused_softmax
    import megatron.core.tensor_parallel as tensor_parallel
    import megatron.core.tensor_parallel.random as tp_random

    undo: list[tuple[object, str, object]] = []

    def patch(obj: object, name: str, value: object) -> None:
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    original_type = torch.Tensor.type

    def cuda_type(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None:
            name = original_type(self)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        return original_type(self, dtype, non_blocking, **kwargs)

    patch(torch.cuda, "current_device", lambda: "cpu")
    patch(torch.cuda, "synchronize", lambda *args, **kwargs: None)  # pipeline p2p shape exchange
    patch(torch.cuda, "current_stream", lambda *args, **kwargs: _NullStream())  # megatron-core 0.19 DDP
    patch(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    patch(torch.nn.Module, "cuda", lambda self, *args, **kwargs: self)
    patch(torch.Tensor, "type", cuda_type)
    patch(fused_softmax, "get_default_causal_mask",
          functools.lru_cache(maxsize=8)(lambda sq: torch.triu(torch.ones(sq, sq), diagonal=1).bool()))
    patch(tensor_parallel, "get_cuda_rng_tracker", lambda *args, **kwargs: _NoRngTracker())
    # activation recompute saves and restores RNG states: the CPU generator only
    patch(tp_random, "_get_all_rng_states", lambda: (torch.get_rng_state(), None, None))
    patch(tp_random, "_set_all_rng_states", lambda cpu, cuda, tracker: torch.set_rng_state(cpu))
    proxy = _TorchOnCPU()
    for name in _MODULES_WITH_CUDA_FACTORIES:
        module = importlib.import_module(name)
        patch(module, "torch", proxy)

    def restore() -> None:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)

    return restore
