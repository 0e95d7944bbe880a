"""Fixtures for the Megatron backend tests; on a CPU-only machine, the CUDA shim of ``megatron_cpu_shim``.

The shim is test-only and scoped to each test module (installed before, undone after); the
library never installs it. On a GPU machine nothing is patched.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# the test helpers beside this file (megatron_helpers, megatron_cpu_shim) are plain modules;
# with --import-mode=importlib their folder is not on sys.path by itself
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install 'megatron-core>=0.16')")


@pytest.fixture(scope="module", autouse=True)
def cpu_cuda_shim():
    """Redirect megatron-core's hard-coded CUDA calls to the CPU (no-op when CUDA exists)."""
    if torch.cuda.is_available():
        yield
        return
    from megatron_cpu_shim import install

    undo = install()
    try:
        yield
    finally:
        undo()


@pytest.fixture(scope="module")
def parallel(request, cpu_cuda_shim):
    """A world of one: torch.distributed + megatron-core parallel_state, TP = PP = 1.

    Modules marked ``gpu`` get it on CUDA (NCCL). The other modules compare against CPU
    references with the shim, so on a CUDA machine they are skipped (``test_megatron_gpu.py`` holds their
    GPU counterparts).
    """
    from agentrl.train.megatron.parallel import destroy_parallel, init_parallel

    if torch.cuda.is_available() and request.node.get_closest_marker("gpu") is None:
        pytest.skip("a CPU-path test (CUDA shim); on GPU machines run tests/megatron/test_megatron_gpu.py")

    layout = init_parallel(1, 1)
    try:
        yield layout
    finally:
        destroy_parallel()
