"""The Triton decode-attention kernel (RoPE + cache write + attention) against its plain-PyTorch reference.

Without a GPU the kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by the
conftest), float32; on a GPU (``-m gpu``) also in bfloat16 and inside a CUDA graph."""

from __future__ import annotations

import asyncio

import pytest
import torch

from agentrl.engine.embedded import gpu_attention as ga

if ga.unavailable() is not None:
    pytest.skip(f"needs Triton: {ga.unavailable()}", allow_module_level=True)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not ga.interpreted():
    pytest.skip("no GPU and Triton's interpreter is off", allow_module_level=True)


def _problem(b, heads, kv_heads, d, max_len, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, (heads + 2 * kv_heads) * d, generator=g).to(DEVICE, dtype)  # one fused projection
    q = qkv[:, : heads * d].view(b, heads, d)
    k = qkv[:, heads * d : (heads + kv_heads) * d].view(b, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d :].view(b, kv_heads, d)
    caches = torch.randn(2, b + 2, kv_heads, max_len, d, generator=g).to(DEVICE, dtype)  # more slots than rows
    angles = torch.arange(max_len)[:, None] * torch.linspace(1e-3, 1.0, d // 2)[None]
    cos = angles.cos().repeat(1, 2).to(DEVICE, dtype)
    sin = angles.sin().repeat(1, 2).to(DEVICE, dtype)
    return q, k, v, caches, cos, sin


CASES = [  # b, heads, kv_heads, d, max_len, length, splits
    (3, 14, 2, 64, 200, 130, 1),  # Qwen2.5-0.5B's head layout (7 query heads per KV head)
    (2, 4, 4, 32, 128, 70, 1),  # no grouping
    (2, 8, 2, 64, 320, 300, 3),  # positions split over three programs, merged
    (1, 6, 2, 128, 600, 520, 4),
]


@pytest.mark.parametrize("b,heads,kv_heads,d,max_len,length,splits", CASES)
def test_kernel_equals_reference_and_writes_the_cache(b, heads, kv_heads, d, max_len, length, splits):
    q, k, v, caches, cos, sin = _problem(b, heads, kv_heads, d, max_len)
    positions = torch.randint(0, length, (b,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    positions[0] = length - 1
    if b > 1:
        positions[-1] = max_len - 1  # a padding row of a batch bucket: past the length block
    want_caches = caches.clone()
    want = ga.reference(q, k, v, want_caches[0], want_caches[1], positions, cos, sin, length, d**-0.5)
    got = ga.decode_attention(q, k, v, caches[0], caches[1], positions, cos, sin, length, d**-0.5, splits=splits)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(caches, want_caches, atol=1e-6, rtol=0)  # the new keys/values, nothing else


def test_a_row_reads_nothing_past_its_position():
    """Garbage (even NaN) after a row's position, or in another slot, does not reach its output."""
    q, k, v, caches, cos, sin = _problem(2, 4, 2, 32, 96, seed=3)
    positions = torch.tensor([10, 40], device=DEVICE)
    clean = ga.decode_attention(q, k, v, *caches.clone(), positions, cos, sin, 96, 0.2)
    dirty = caches.clone()
    dirty[:, 0, :, 11:] = float("nan")
    dirty[:, 1, :, 41:] = float("nan")
    dirty[:, 2:] = float("nan")
    got = ga.decode_attention(q, k, v, dirty[0], dirty[1], positions, cos, sin, 96, 0.2)
    assert torch.equal(got, clean)


def test_a_row_at_skip_at_reads_no_cached_position():
    """A CUDA graph's padding rows sit at ``skip_at`` (the cache's last position): with ``length``
    the whole cache they would stream every position; they attend to their own token only, write it
    there, and the other rows do not change."""
    q, k, v, caches, cos, sin = _problem(3, 4, 2, 32, 96, seed=5)
    positions = torch.tensor([10, 95, 40], device=DEVICE)
    want_caches = caches.clone()
    want = ga.reference(q, k, v, want_caches[0], want_caches[1], positions, cos, sin, 96, 0.2, skip_at=95)
    got = ga.decode_attention(q, k, v, caches[0], caches[1], positions, cos, sin, 96, 0.2, skip_at=95)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(caches, want_caches, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], v[1].repeat_interleave(2, dim=0), atol=1e-6, rtol=0)
    full = ga.decode_attention(q, k, v, *caches.clone(), positions, cos, sin, 96, 0.2)
    torch.testing.assert_close(got[[0, 2]], full[[0, 2]], atol=0, rtol=0)


def test_the_first_token_attends_to_itself_only():
    q, k, v, caches, cos, sin = _problem(2, 4, 2, 32, 64, seed=4)
    got = ga.decode_attention(q, k, v, caches[0], caches[1], torch.zeros(2, dtype=torch.long, device=DEVICE),
                              cos, sin, 64, 0.2)
    torch.testing.assert_close(got, v.repeat_interleave(2, dim=1), atol=1e-6, rtol=0)


def test_bad_input_is_refused():
    q, k, v, caches, cos, sin = _problem(2, 4, 2, 32, 64)
    pos = torch.tensor([3, 4], device=DEVICE)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        ga.decode_attention(q[:, :3], k, v, caches[0], caches[1], pos, cos, sin, 64, 0.2)
    with pytest.raises(ValueError, match="caches must be"):
        ga.decode_attention(q, k, v, caches[0][:, :1], caches[1][:, :1], pos, cos, sin, 64, 0.2)
    with pytest.raises(ValueError, match="contiguous"):
        ga.decode_attention(q, k, v, caches[0], caches[1], pos, cos.t().contiguous().t(), sin, 64, 0.2)
    with pytest.raises(ValueError, match="length must be"):
        ga.decode_attention(q, k, v, caches[0], caches[1], pos, cos, sin, 65, 0.2)
    if CUDA:
        with pytest.raises(ValueError, match="every tensor must be on"):
            ga.decode_attention(q, k, v, caches[0], caches[1], pos.cpu(), cos, sin, 64, 0.2)


def test_unsupported_says_why(monkeypatch):
    assert "power-of-two head size" in ga.unsupported(torch.device(DEVICE), torch.float32, 80)
    assert "power-of-two head size" in ga.unsupported(torch.device(DEVICE), torch.float32, 16)
    assert "bfloat16, float16 or float32" in ga.unsupported(torch.device(DEVICE), torch.float64, 64)
    assert ga.unsupported(torch.device(DEVICE), torch.float32, 64) is None  # compiles and agrees with the reference
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "runs on CUDA" in ga.unsupported(torch.device("cpu"), torch.float32, 64)


def test_splits_only_where_the_batch_leaves_processors_idle():
    assert ga.splits_for(64, 2, 4096, 132) == 1  # 128 programs: nearly every SM busy
    assert ga.splits_for(32, 2, 4096, 132) == 3  # 64 programs: over half of the SMs idle
    assert ga.splits_for(256, 2, 8192, 132) == 1
    assert ga.splits_for(1, 2, 300, 132) == 1  # short: one program reads it quickly
    assert ga.splits_for(1, 2, 4096, 132) == 16  # 4096 / 256 positions, capped at 16
    assert ga.splits_for(4, 2, 1024, 132) == 4  # 1024 / 256


def _tiny_engine(attention: str, **kw):
    from transformers import AutoModelForCausalLM

    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.testing import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab_size=512, hidden_size=128, num_attention_heads=4))
    return EmbeddedEngine(model.to(DEVICE).eval(), decode_attention=attention, max_batch_size=8, max_seq_len=128, **kw)


def test_engine_with_the_kernel_equals_sdpa():
    """Greedy tokens equal, logprobs within float rounding, requests of several lengths together."""
    from agentrl.engine import SamplingParams

    sp = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    prompts = [[(5 * i + j) % 500 + 3 for j in range(4 + 7 * i)] for i in range(5)]
    results = {}
    for attention in ("sdpa", "triton"):
        engine = _tiny_engine(attention, **({} if CUDA else {"pack_weights": False}))
        assert engine.config.decode_attention == attention

        async def main(engine):
            async with engine:
                return await asyncio.gather(*(engine.generate(p, sp) for p in prompts))

        results[attention] = asyncio.run(main(engine))
    for a, b in zip(results["sdpa"], results["triton"]):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("splits", [1, 3])
def test_bf16_kernel_in_a_cuda_graph(splits):
    q, k, v, caches, cos, sin = _problem(6, 14, 2, 64, 1024, torch.bfloat16)
    positions = torch.tensor([0, 5, 100, 700, 899, 1023], device="cuda")
    want_caches = caches.clone()
    want = ga.reference(q, k, v, want_caches[0], want_caches[1], positions, cos, sin, 900, 0.125)
    graph = torch.cuda.CUDAGraph()
    snapshot = caches.clone()
    ga.decode_attention(q, k, v, caches[0], caches[1], positions, cos, sin, 900, 0.125, splits=splits)  # compile
    caches.copy_(snapshot)
    with torch.cuda.graph(graph):
        out = ga.decode_attention(q, k, v, caches[0], caches[1], positions, cos, sin, 900, 0.125, splits=splits)
    caches.copy_(snapshot)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(caches.float(), want_caches.float(), atol=1e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.multigpu
@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_kernel_on_a_second_gpu_while_the_first_is_current():
    """An engine on cuda:1 (async training with --engine-device cuda:1): Triton launches on the
    current device, so the kernel makes the tensors' device current."""
    torch.cuda.set_device(0)
    q, k, v, caches, cos, sin = (t.to("cuda:1") for t in _problem(3, 14, 2, 64, 700, torch.bfloat16))
    positions = torch.tensor([10, 650, 699], device="cuda:1")
    want_caches = caches.clone()
    want = ga.reference(q, k, v, want_caches[0], want_caches[1], positions, cos, sin, 660, 0.125)
    for splits in (1, 2):
        got = ga.decode_attention(q, k, v, *caches.clone(), positions, cos, sin, 660, 0.125, splits=splits)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    assert ga._self_check(torch.device("cuda:1"), torch.bfloat16) is None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_engine_defaults_to_the_kernel_and_captures_during_a_trainer_pass():
    """With the kernel the decode step reads no cuDNN flag, so a capture need not wait for a
    training pass that holds it off (with SDPA such steps ran eagerly)."""
    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.testing import tiny_config
    from agentrl.utils.attention import no_cudnn_attention
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab_size=512, hidden_size=128, num_attention_heads=4))
    engine = EmbeddedEngine(model.to("cuda", torch.bfloat16).eval(), max_batch_size=8, max_seq_len=128)
    assert engine.config.decode_attention == "triton"
    sp = SamplingParams(temperature=1.0, max_new_tokens=24, ignore_eos=True, seed=0)

    async def main():
        async with engine:
            with no_cudnn_attention("cuda"):  # what a trainer pass holds in another thread
                return await asyncio.gather(*(engine.generate([5, 6, 7, 8 + i], sp) for i in range(4)))

    out = asyncio.run(main())
    assert all(len(c.token_ids) == 24 for c in out)
    stats = engine.stats
    assert stats.graphs_captured >= 1
    assert stats.steps == stats.graph_steps  # with the kernel a shape is captured on its first use
