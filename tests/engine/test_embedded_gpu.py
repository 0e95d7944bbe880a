"""The embedded engine on CUDA: CUDA-graph decode against eager and against transformers.

Run on a GPU machine: ``pytest tests/engine/test_embedded_gpu.py -m gpu``. The models are built
from configs (no tokenizer, no downloads); the tests are plain functions (no pytest-asyncio needed).
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from agentrl.engine import SamplingParams
from agentrl.engine.embedded import EmbeddedEngine

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected everywhere, run only where CUDA is
    pytest.skip("needs a CUDA GPU", allow_module_level=True)


def _model(arch: str, dtype=torch.float32, **overrides):
    from transformers import AutoModelForCausalLM

    from agentrl.testing import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(arch, vocab_size=2048, **overrides)
    return AutoModelForCausalLM.from_config(cfg).to("cuda", dtype).eval()


def _generate_all(engine, prompts, sp):
    async def main():
        async with engine:
            seq = [await engine.generate(p, sp) for p in prompts]
            conc = await asyncio.gather(*(engine.generate(p, sp) for p in prompts))
            return seq, conc

    return asyncio.run(main())


PROMPTS = [[(7 * i + j) % 2000 + 3 for j in range(5 + 3 * i)] for i in range(16)]


def _assert_greedy_equals_transformers(model, engine):
    """16 prompts, one after another and all at once: the same 20 greedy tokens as ``generate()``,
    and logprobs equal to a teacher-forced forward pass within 1e-4."""
    sp = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)
    seq, conc = _generate_all(engine, PROMPTS, sp)
    for p, a, b in zip(PROMPTS, seq, conc):
        ref = model.generate(torch.tensor([p], device="cuda"), max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
        assert a.token_ids == b.token_ids == ref[0, len(p):].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([p + a.token_ids], device="cuda")).logits[0, len(p) - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(a.token_ids, device="cuda")[:, None]).squeeze(1)
        assert torch.allclose(lp.cpu(), torch.tensor(a.logprobs), atol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("options", [
    dict(cuda_graphs=True, compile=False), dict(cuda_graphs=False), dict(cuda_graphs=True, compile=True),
    dict(compile=True, decode_attention="efficient"), dict(compile=True, decode_attention="matmul", fuse_weights=False),
    dict(overlap=False), dict(high_priority_stream=True),
])
def test_cuda_fast_path_float32_equals_transformers(arch, options):
    model = _model(arch)
    engine = EmbeddedEngine(model, max_batch_size=8, max_seq_len=256, **options)
    assert engine.config.overlap == options.get("overlap", True)
    assert engine.config.admit_wait_steps == 8  # CUDA default: arrivals may wait to share a prefill
    assert engine.backend == "fast"
    _assert_greedy_equals_transformers(model, engine)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
@pytest.mark.parametrize("options", [dict(), dict(compile=False), dict(cuda_graphs=False)])
def test_cuda_triton_decode_float32_equals_transformers(arch, options):
    """The default decode attention on CUDA (the Triton kernel, head size 32 here)."""
    model = _model(arch, hidden_size=128, **({"head_dim": 32} if arch == "qwen3" else {}))
    engine = EmbeddedEngine(model, max_batch_size=8, max_seq_len=256, **options)
    assert engine.config.decode_attention == "triton"
    _assert_greedy_equals_transformers(model, engine)


def test_cuda_bf16_logprobs_close_to_teacher_forcing():
    model = _model("qwen2", torch.bfloat16, hidden_size=256, intermediate_size=512, num_attention_heads=4)
    sp = SamplingParams(temperature=1.0, max_new_tokens=32, ignore_eos=True, seed=0)
    engine = EmbeddedEngine(model, max_batch_size=16, max_seq_len=256)
    seq, conc = _generate_all(engine, PROMPTS, sp)
    diffs = []
    for p, c in zip(PROMPTS, seq):
        with torch.no_grad():
            logits = model(torch.tensor([p + c.token_ids], device="cuda")).logits[0, len(p) - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.token_ids, device="cuda")[:, None]).squeeze(1)
        diffs.append((lp.cpu() - torch.tensor(c.logprobs)).abs())
    assert torch.cat(diffs).mean() < 0.05


def test_cuda_update_weights_keeps_graphs_valid():
    model = _model("qwen2")
    other = _model("qwen2")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sp = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)

    async def main():
        async with EmbeddedEngine(model, max_batch_size=4, max_seq_len=128) as engine:
            before = await engine.generate(PROMPTS[0], sp)
            await engine.update_weights(other.state_dict())
            after = await engine.generate(PROMPTS[0], sp)
            return before, after

    before, after = asyncio.run(main())
    ref = other.generate(torch.tensor([PROMPTS[0]], device="cuda"), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    assert after.token_ids == ref[0, len(PROMPTS[0]):].tolist() != before.token_ids


def test_cuda_graph_sampling_equals_eager_sampling():
    """Sampling inside the CUDA graph (plain, greedy) and outside it (top-k) matches the eager path."""
    model = _model("qwen2")
    params = [SamplingParams(temperature=[0, 0.8, 1.0][i % 3], top_k=5 if i % 5 == 4 else -1, max_new_tokens=8 + i,
                             seed=i, ignore_eos=True) for i in range(len(PROMPTS))]

    async def run(**options):
        async with EmbeddedEngine(model, max_batch_size=16, max_seq_len=256, **options) as engine:
            return await asyncio.gather(*(engine.generate(p, s) for p, s in zip(PROMPTS, params)))

    graphed = asyncio.run(run())
    eager = asyncio.run(run(cuda_graphs=False, compile=False, overlap=False))
    for a, b in zip(graphed, eager):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_cuda_prefill_runs_no_cudnn_attention_and_matches_transformers():
    """Prefills (plain and over cached prefixes) use flash / memory-efficient attention, never cuDNN's,
    which builds a graph per new shape; their last-token logits match the HF forward (bf16)."""
    from agentrl.engine.embedded.fast_model import FastLM
    from agentrl.engine.embedded.kv_cache import KVCache

    model = _model("qwen2", torch.bfloat16, num_key_value_heads=2)
    lm = FastLM(model, max_seq_len=256)
    kv = KVCache(n_layers=lm.n_layers, n_slots=4, n_kv_heads=lm.n_kv_heads, max_len=256, head_dim=lm.head_dim,
                 dtype=lm.dtype, device=lm.device)
    kv.allocate()
    prompts = [PROMPTS[15] * 3, PROMPTS[9], PROMPTS[12] * 2]

    def prefill(slots, parts, starts, prefix=None):
        kv.ensure_clean_slots(slots, [s + len(p) for p, s in zip(parts, starts)])  # as the runner does
        flat = lambda xs: torch.tensor(xs, device="cuda")  # noqa: E731
        return lm.prefill(kv, flat([t for p in parts for t in p]),
                          flat([s + i for p, s in zip(parts, starts) for i in range(len(p))]),
                          flat([slot for slot, p in zip(slots, parts) for _ in p]), [len(p) for p in parts], prefix=prefix)

    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        plain = prefill([0, 1, 2], prompts, [0, 0, 0])
        cached = [0, 7, 10]
        prefill([1, 2], [prompts[1][:7], prompts[2][:10]], [0, 0])
        over = prefill([0, 1, 2], [p[c:] for p, c in zip(prompts, cached)], cached, prefix=list(zip([0, 1, 2], cached)))
    names = {e.key for e in prof.key_averages()}
    assert not [n for n in names if "cudnn_attention" in n], names
    assert any("flash" in n or "efficient" in n for n in names), names
    with torch.no_grad():
        ref = torch.stack([model(torch.tensor([p], device="cuda")).logits[0, -1].float() for p in prompts])
    for got in (plain, over):
        torch.testing.assert_close(got.float(), ref, atol=0.1, rtol=0.05)


def test_cuda_engine_decodes_on_a_high_priority_stream_when_asked():
    async def priorities(engine):
        async with engine:
            await engine.generate(PROMPTS[0], SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
            return await asyncio.wrap_future(engine._scheduler.call(lambda: torch.cuda.current_stream().priority))

    model = _model("qwen2")
    high = asyncio.run(priorities(EmbeddedEngine(model, max_batch_size=4, max_seq_len=64, high_priority_stream=True)))
    default = asyncio.run(priorities(EmbeddedEngine(model, max_batch_size=4, max_seq_len=64)))
    assert default == 0 and high < 0, (default, high)
