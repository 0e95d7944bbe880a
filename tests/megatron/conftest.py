"""Test-only shim: run megatron-core on the CPU.

megatron-core assumes CUDA in a few places on the paths these tests use (``torch.cuda.current_device()``
as a device, ``.cuda()`` calls, a causal mask made on ``"cuda"``). When no GPU is present this
conftest redirects those calls to the CPU for the duration of each test module and sets up a
world of one process (gloo) with megatron-core's parallel state. The library never does this;
on a GPU machine the shim is not installed.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install 'megatron-core>=0.16')")


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq), diagonal=1).bool()


@pytest.fixture(scope="module", autouse=True)
def cpu_cuda_shim():
    """Redirect megatron-core's hard-coded CUDA calls to the CPU (no-op when CUDA exists)."""
    if torch.cuda.is_available():
        yield
        return
    import megatron.core.fusions.fused_softmax as fused_softmax

    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "current_device", lambda: "cpu")
    mp.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    mp.setattr(torch.nn.Module, "cuda", lambda self, *args, **kwargs: self)
    mp.setattr(fused_softmax, "get_default_causal_mask", functools.lru_cache(maxsize=8)(_cpu_causal_mask))
    try:
        yield
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def parallel(cpu_cuda_shim):
    """A world of one: torch.distributed (gloo) + megatron-core parallel_state, TP = PP = 1."""
    from agentrl.train.megatron.parallel import destroy_parallel, init_parallel

    layout = init_parallel(1, 1)
    try:
        yield layout
    finally:
        destroy_parallel()
