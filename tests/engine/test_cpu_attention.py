"""The CPU decode attention kernel: against PyTorch's attention, row independence, bad input, the
engine's choice of it, and the fallback when it cannot be built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from agentrl.engine.embedded import cpu_attention

needs_kernel = pytest.mark.skipif(cpu_attention.unavailable() is not None,
                                  reason=f"kernel not built here: {cpu_attention.unavailable()}")


def _case(b, h, g, d, length, max_len, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(b + 2, 2, h, max_len, d, generator=gen)  # [slots, k/v, heads, max_len, dim], as the slot cache
    k, v = cache[:b, 0, :, :length], cache[:b, 1, :, :length]
    q = torch.randn(b, h, g, d, generator=gen)
    return q, k, v


def _reference(q, k, v, positions, scale):
    visible = torch.arange(k.shape[2])[None] <= positions[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :], scale=scale)


@needs_kernel
@pytest.mark.parametrize("b,h,g,d", [(5, 3, 3, 64), (2, 1, 1, 8), (4, 2, 4, 100), (1, 4, 8, 128)])
def test_kernel_matches_sdpa_on_strided_cache_blocks(b, h, g, d):
    length = 37
    q, k, v = _case(b, h, g, d, length, max_len=48)
    positions = torch.tensor([0, length - 1, 5, 20, 36][:b])
    out = cpu_attention.decode_attention(q, k, v, positions, d**-0.5)
    ref = _reference(q, k, v, positions, d**-0.5)
    assert out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@needs_kernel
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count():
    q, k, v = _case(6, 3, 3, 64, 50, max_len=64)
    positions = torch.tensor([49, 3, 17, 30, 49, 0])
    batched = cpu_attention.decode_attention(q, k, v, positions, 0.125)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for i in range(6):
            alone = cpu_attention.decode_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1], positions[i:i + 1], 0.125)
            assert torch.equal(alone[0], batched[i])
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_bad_input_is_refused_with_a_clear_error():
    q, k, v = _case(2, 1, 3, 16, 10, max_len=12)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 10\)"):
        cpu_attention.decode_attention(q, k, v, torch.tensor([3, 10]), 0.25)
    with pytest.raises(ValueError, match="float32"):
        cpu_attention.decode_attention(q.bfloat16(), k, v, torch.tensor([3, 4]), 0.25)
    with pytest.raises(ValueError, match="D contiguous"):
        cpu_attention.decode_attention(q, k.transpose(-1, -2), v, torch.tensor([3, 4]), 0.25)
    with pytest.raises(ValueError, match="shape"):
        cpu_attention.decode_attention(q, k, v, torch.tensor([3]), 0.25)


@needs_kernel
def test_the_engine_uses_it_for_float32_on_the_cpu_only():
    from agentrl.engine.embedded import EmbeddedEngine

    assert EmbeddedEngine("tiny-qwen2", max_batch_size=2, max_seq_len=64).config.decode_attention == "cpu"
    bf16 = EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64)
    assert bf16.config.decode_attention == "sdpa"
    with pytest.raises(ValueError, match="decode_attention='cpu'.*float32"):
        EmbeddedEngine("tiny-qwen2", dtype="bfloat16", max_batch_size=2, max_seq_len=64, decode_attention="cpu")


def test_without_a_compiler_the_engine_keeps_sdpa_and_says_why(monkeypatch, tmp_path, caplog):
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.models import load_model

    model, tokenizer = load_model("tiny-qwen2")  # before the cache folder moves
    monkeypatch.setattr(cpu_attention, "_STATE", {})  # forget the kernel this process built
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))  # and the cached build
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with caplog.at_level("INFO", logger="agentrl.engine.embedded.cpu_attention"):
        reason = cpu_attention.unavailable()
    assert reason is not None and "no-such-cc" in reason and "no-such-cc" in caplog.text
    assert EmbeddedEngine(model, tokenizer, max_batch_size=2, max_seq_len=64).config.decode_attention == "sdpa"
    with pytest.raises(ValueError, match="decode_attention='cpu'.*no-such-cc"):
        EmbeddedEngine(model, tokenizer, max_batch_size=2, max_seq_len=64, decode_attention="cpu")
    with pytest.raises(RuntimeError, match="no-such-cc"):
        cpu_attention.decode_attention(*_case(1, 1, 1, 8, 4, 4), torch.tensor([2]), 1.0)


@needs_kernel
def test_a_cached_build_is_reused(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_attention, "_STATE", {})
    monkeypatch.setenv("AGENTRL_CACHE", str(tmp_path))
    assert cpu_attention.unavailable() is None
    built = list((tmp_path / "kernels").glob("decode_attention_*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_attention, "_STATE", {})
    assert cpu_attention.unavailable() is None
    assert built[0].stat().st_mtime_ns == mtime  # loaded, not compiled again
