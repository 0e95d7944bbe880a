"""megatron-core stays optional: nothing imports it until the backend is used, and a missing
installation (or a missing GPU) fails with an actionable message."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agentrl.train.megatron import _compat


_PROBE = """
import sys, agentrl, agentrl.train, agentrl.train.megatron
import agentrl.train.megatron.shape, agentrl.train.megatron.batching, agentrl.train.megatron.logprobs
print(sorted(m for m in sys.modules if m.startswith("megatron")))
from agentrl.train.megatron import MegatronTrainer
try:
    MegatronTrainer("tiny-qwen2")
except RuntimeError as err:
    print("error:", err)
"""


@pytest.fixture(scope="module")
def probe() -> list[str]:
    """One fresh interpreter: which megatron modules a plain import loads, and what a trainer says."""
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


def test_importing_agentrl_does_not_import_megatron(probe):
    assert probe[0] == "[]"


def test_missing_megatron_names_the_install_command(monkeypatch):
    monkeypatch.setattr(_compat, "megatron_available", lambda: False)
    with pytest.raises(_compat.MegatronNotInstalledError, match=r"pip install 'megatron-core>=0.16'"):
        _compat.require_megatron()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_trainer_without_a_gpu_says_to_use_the_torch_backend(probe):
    assert "needs a CUDA GPU" in probe[-1] and "--trainer torch" in probe[-1]
