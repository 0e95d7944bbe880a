"""Tensor, data, pipeline and sequence parallelism against the single-process references.

Two processes under torchrun run ``parallel_worker.py``: on CPUs with gloo and the test shim
(slow: two fresh interpreters), on two GPUs with NCCL (``multigpu``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("parallel_worker.py")


def _run(tmp_path: Path, *args: str, timeout: int = 600) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads((tmp_path / "result.json").read_text())


def _check(result: dict, tol: float) -> None:
    assert result["broadcast_ok"] == 1.0
    assert result["roundtrip_max_diff"] == 0.0
    for key in ("logits_max_diff", "logprobs_max_diff"):
        if key in result:
            assert result[key] < tol, (key, result[key])
    assert result["old_logprobs_max_diff"] < tol
    assert result["logprobs_after_max_diff"] < 2 * tol
    for step in (0, 1):
        for metric in ("loss", "grad_norm", "kl_loss", "entropy"):
            diff = result[f"step{step}_train/{metric}_diff"]
            scale = max(1.0, abs(result[f"step{step}_train/{metric}"]))
            assert diff < tol * scale, (step, metric, diff)
    assert result["weights_max_diff"] < 10 * tol


LAYOUTS = {
    "tp2": ("--tp", "2"),
    "dp2": ("--tp", "1"),
    "pp2": ("--pp", "2"),
    "tp2-sp": ("--tp", "2", "--sequence-parallel"),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_two_cpu_processes_match_one(tmp_path, layout):
    if torch.cuda.is_available():
        pytest.skip("the CPU variant; see test_two_gpus_match_one")
    result = _run(tmp_path, *LAYOUTS[layout])
    assert result["world"] == 2
    _check(result, tol=1e-4)


@pytest.mark.gpu
@pytest.mark.multigpu
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_two_gpus_match_one(tmp_path, layout):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    _check(_run(tmp_path, *LAYOUTS[layout]), tol=1e-3)


@pytest.mark.gpu
@pytest.mark.multigpu
def test_two_gpus_bf16_tensor_parallel_stays_close_to_one(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    result = _run(tmp_path, "--tp", "2", "--dtype", "bfloat16")
    assert result["roundtrip_max_diff"] == 0.0
    assert result["logits_max_diff"] < 1e-4  # the float32 section of the worker
    assert result["old_logprobs_max_diff"] < 0.1
    for step in (0, 1):
        assert result[f"step{step}_train/loss_diff"] < 0.05 * max(1.0, abs(result[f"step{step}_train/loss"]))
