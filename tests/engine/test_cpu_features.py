"""The CPU paths on a CPU without AVX-512: bf16 packing and the C attention kernel check what the
CPU can run and fall back (or refuse, naming the option) instead of crashing.

Each branch is tested on this machine whatever its CPU: by forcing the feature check off, and in a
subprocess where ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` make oneDNN and ATen behave as
on a CPU with AVX2 alone (the variables are read when torch loads)."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from agentrl.engine import SamplingParams
from agentrl.engine.embedded import EmbeddedEngine, cpu_attention
from agentrl.engine.embedded.fast_model import pack_linear_weight, packing_unsupported
from agentrl.utils import cpu_features

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)


def test_the_bf16_check_agrees_with_onednn():
    """Packing succeeds exactly where the check says it can."""
    why = cpu_features.bf16_packing_unsupported()
    w = torch.randn(32, 16).bfloat16()
    if why is None:
        assert pack_linear_weight(w, 4).is_mkldnn
        assert packing_unsupported(CPU, torch.bfloat16) is None
    else:
        with pytest.raises(RuntimeError, match="bf16"):
            pack_linear_weight(w, 4)
        assert packing_unsupported(CPU, torch.bfloat16) == why
    assert packing_unsupported(CPU, torch.float32) is None  # float32 packs on any x86-64 (SSE4.1 and up)


@pytest.fixture
def no_bf16(monkeypatch):
    """This CPU as one without oneDNN bf16 kernels (AVX2 alone)."""
    monkeypatch.setattr(cpu_features, "bf16_packing_unsupported", lambda: "no bf16 kernels here (forced)")


def test_bf16_without_cpu_support_runs_unpacked_and_says_so(no_bf16, caplog):
    with caplog.at_level("WARNING", logger="agentrl.engine.embedded.engine"):
        engine = EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64)
    assert engine.backend == "fast" and engine.dtype == torch.bfloat16
    assert engine.config.pack_weights is False and engine.config.decode_attention == "sdpa"
    assert "bfloat16 on this CPU" in caplog.text and "forced" in caplog.text and "--engine-dtype float32" in caplog.text

    async def run():
        async with engine:
            return await engine.generate([1, 2, 3], GREEDY)

    assert len(asyncio.run(run()).token_ids) == 6
    with pytest.raises(ValueError, match=r"^pack_weights: no bf16 kernels here \(forced\)$"):
        EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64, pack_weights=True)
    assert EmbeddedEngine("tiny-qwen2", max_batch_size=2, max_seq_len=64).config.pack_weights  # float32 still packs


def test_bf16_with_cpu_support_packs_without_a_warning(caplog):
    if cpu_features.bf16_packing_unsupported():
        pytest.skip(cpu_features.bf16_packing_unsupported())
    with caplog.at_level("WARNING", logger="agentrl.engine.embedded.engine"):
        engine = EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64)
    assert engine.config.pack_weights is True and "bfloat16 on this CPU" not in caplog.text


_AVX2_SCRIPT = textwrap.dedent("""
    import asyncio, torch
    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.utils import cpu_features
    print("CAPABILITY", torch.backends.cpu.get_cpu_capability())
    print("REASON", cpu_features.bf16_packing_unsupported())

    async def main():
        async with EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64) as e:
            c = await e.generate([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True))
            print("BF16", e.config.pack_weights, len(c.token_ids))
        async with EmbeddedEngine("tiny-qwen2", max_batch_size=2, max_seq_len=64) as e:
            c = await e.generate([1, 2, 3], SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True))
            print("F32", e.config.pack_weights, e.config.decode_attention, len(c.token_ids))

    asyncio.run(main())
    try:
        EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64, pack_weights=True)
    except ValueError as exc:
        print("REFUSED", exc)
""")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's AVX2 limit is for x86-64")
def test_an_avx2_only_cpu_falls_back_in_a_subprocess(tmp_path):
    """What crashed on an AVX2-only EPYC (``mkldnn_reorder_linear_weight: bf16 path needs...``), run
    here with oneDNN and ATen held to AVX2: bf16 generates unpacked, an explicit pack is refused in
    one line, float32 keeps its fast path. (A private inductor cache: kernels that torch.compile
    cached for this CPU's full instruction set must not meet the AVX2 ones.)"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert out["CAPABILITY"] in ("AVX2", "DEFAULT")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 is set" in out["REASON"]
    assert out["BF16"] == "False 5"
    assert out["F32"] in ("True cpu 5", "True sdpa 5")  # the C kernel where a compiler is installed
    assert out["REFUSED"].startswith("pack_weights: oneDNN has no bf16 kernels") and "\n" not in out["REFUSED"]
    assert "bfloat16 on this CPU" in done.stderr and "Traceback" not in done.stderr


needs_kernel = pytest.mark.skipif(cpu_attention.unavailable() is not None,
                                  reason=f"kernel not built here: {cpu_attention.unavailable()}")


@needs_kernel
def test_a_kernel_built_on_another_cpu_is_not_loaded(monkeypatch, tmp_path):
    """-march=native code is keyed by the CPU's flags: a cache filled on another CPU (here: one
    whose flags differ) is not reused; this CPU builds its own."""
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_attention, "_STATE", {})
    assert "-march=native" in cpu_attention.compile_flags()[0]
    assert cpu_attention.unavailable() is None
    other = cpu_features.cpu_signature() + " amx_fp8"  # the same CPU with one more feature
    monkeypatch.setattr(cpu_features, "cpu_signature", lambda: other)
    monkeypatch.setattr(cpu_attention, "_STATE", {})
    assert cpu_attention.unavailable() is None
    assert len(list((tmp_path / "kernels").glob("decode_attention_*.so"))) == 2


@needs_kernel
def test_unknown_cpu_flags_build_a_portable_kernel(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_attention, "_STATE", {})
    monkeypatch.setattr(cpu_features, "cpu_signature", lambda: None)
    flags, target = cpu_attention.compile_flags()
    assert not any(f.startswith("-march") for f in flags) and target.endswith("|baseline")
    assert cpu_attention.unavailable() is None  # built, loaded and checked against PyTorch's attention
