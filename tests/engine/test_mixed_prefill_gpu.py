"""Mixed steps on CUDA: the variable-length kernel in bf16 inside a CUDA graph, and the engine's
mixed steps (chunked prompts, shared group prefixes, graph replays) against transformers.

Run on a GPU machine: ``pytest tests/engine/test_mixed_prefill_gpu.py -m gpu``."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from agentrl.engine import SamplingParams
from agentrl.engine.embedded import EmbeddedEngine
from agentrl.engine.embedded import prefill_attention as pa

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():  # collected everywhere, run only where CUDA is
    pytest.skip("needs a CUDA GPU", allow_module_level=True)


def _model(arch: str, dtype=torch.float32, **overrides):
    from transformers import AutoModelForCausalLM

    from agentrl.testing import tiny_config

    torch.manual_seed(0)
    shape = {"hidden_size": 128, **({"head_dim": 32} if arch == "qwen3" else {}), **overrides}
    return AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=2048, **shape)).to("cuda", dtype).eval()


def test_bf16_kernel_in_a_cuda_graph():
    g = torch.Generator().manual_seed(0)
    seqs = np.array([[0, 300, 0, 0, 0, 0], [300, 1, 900, 1, 1, 0], [301, 64, 700, 2, 2, 0], [365, 40, 100, 3, 0, 100],
                     [405, 1, 0, 4, 4, 0]], dtype=np.int64)
    q = torch.randn(512, 14, 64, generator=g).to("cuda", torch.bfloat16)
    caches = torch.randn(2, 6, 2, 1024, 64, generator=g).to("cuda", torch.bfloat16)
    want = pa.reference(q, caches[0], caches[1], seqs, 0.125)
    tiles = pa.tile_table(seqs[:, 1], pa.block_tokens(7))
    tiles_dev = torch.from_numpy(np.concatenate([tiles, [[-1, 0]] * 40])).cuda()  # a bucket's spare tiles
    seqs_dev = torch.from_numpy(seqs).cuda()
    pa.attention(q, caches[0], caches[1], seqs_dev, tiles_dev, 0.125)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pa.attention(q, caches[0], caches[1], seqs_dev, tiles_dev, 0.125)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out[:406].float(), want[:406].float(), atol=2e-2, rtol=2e-2)
    assert pa._self_check(torch.device("cuda"), torch.bfloat16) is None


def _episodes(engine, prompts, turns=3, temperature=0.0):
    async def episode(prompt, i):
        out = []
        for turn in range(turns):
            sp = SamplingParams(temperature=temperature, seed=100 * i + turn, max_new_tokens=6 + 3 * turn + i % 4,
                                ignore_eos=True)
            c = await engine.generate(prompt, sp)
            out.append((list(prompt), c))
            prompt = prompt + c.token_ids + [(7 * turn + j) % 2000 + 3 for j in range(5)]  # a "tool answer"
        return out

    async def main():
        async with engine:
            results = await asyncio.gather(*(episode(p, i) for i, p in enumerate(prompts)))
            runner = engine._scheduler.runner
            return results, sorted({key[1] for key in runner._graphs if key[0] == "mixed"})

    return asyncio.run(main())


PROMPTS = [[(7 * i + j) % 2000 + 3 for j in range(20 + 9 * i)] for i in range(8)]
PROMPTS += [PROMPTS[2]] * 4  # a group: samples of one prompt


@pytest.mark.parametrize("admit_ahead", [False, True])
@pytest.mark.parametrize("arch,budget", [("qwen2", 8192), ("qwen2", 24), ("llama", 24), ("qwen3", 24)])
def test_cuda_mixed_steps_float32_equal_transformers(arch, budget, admit_ahead):
    """Greedy multi-turn episodes (a group of four among them) with mixed steps replayed from CUDA
    graphs, prompts chunked at 24 tokens per step: the tokens of ``generate()`` for each turn's
    context, logprobs within 1e-4 of a teacher-forced forward; with ``admit_ahead`` too (admissions
    launched over the decode step in flight)."""
    model = _model(arch)
    engine = EmbeddedEngine(model, max_batch_size=16, max_seq_len=512, prefix_cache=True, prefill_token_budget=budget,
                            admit_ahead=admit_ahead)
    assert engine.config.mixed_prefill and engine._scheduler.mixed and engine._scheduler.runner.varlen_kernel
    engine._scheduler.runner.capture_after = 1
    results, buckets = _episodes(engine, PROMPTS)
    assert buckets, "no mixed step was replayed from a CUDA graph"
    assert engine.stats.cached_prompt_tokens > 0
    for turns in results:
        for prompt, c in turns:
            ref = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=len(c.token_ids),
                                 min_new_tokens=len(c.token_ids), do_sample=False, pad_token_id=0)
            assert c.token_ids == ref[0, len(prompt):].tolist()
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids], device="cuda")).logits[0, len(prompt) - 1 : -1]
            lp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(c.token_ids, device="cuda")[:, None])
            torch.testing.assert_close(torch.tensor(c.logprobs), lp.squeeze(1).cpu(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("admit_ahead", [False, True])
def test_cuda_bf16_mixed_steps_sample_with_the_models_logprobs_and_release_memory(admit_ahead):
    """bf16, sampled, many episodes at once: logprobs close to teacher forcing; after a release of the
    KV cache (graphs dropped) and a weight update, a greedy run still equals itself."""
    model = _model("qwen2", torch.bfloat16, hidden_size=256, intermediate_size=512, num_attention_heads=8,
                   num_key_value_heads=2)
    engine = EmbeddedEngine(model, max_batch_size=16, max_seq_len=512, prefill_token_budget=64, admit_ahead=admit_ahead)
    results, _ = _episodes(engine, PROMPTS, temperature=1.0)
    diffs = []
    for turns in results:
        for prompt, c in turns:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + c.token_ids], device="cuda")).logits[0, len(prompt) - 1 : -1]
            lp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(c.token_ids, device="cuda")[:, None])
            diffs.append((lp.squeeze(1).cpu() - torch.tensor(c.logprobs)).abs())
    assert torch.cat(diffs).mean() < 0.05

    sp = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    engine = EmbeddedEngine(model, max_batch_size=16, max_seq_len=512, prefill_token_budget=64,
                            admit_ahead=admit_ahead)  # (the last one is closed)

    async def at_once():  # one admission for all (bf16 results depend on the batch)
        with engine._scheduler._cv:
            futures = [engine._scheduler.submit(engine._request(p, sp, None)) for p in PROMPTS]
        return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    async def main():
        async with engine:
            first = await at_once()
            await engine.release_memory()
            assert not engine._scheduler.runner.kv.allocated
            again = await at_once()
            version = await engine.update_weights()
            after = await at_once()
            return first, again, after, version

    first, again, after, version = asyncio.run(main())
    assert version == 1 and all(c.weight_version == 1 for c in after)
    assert [c.token_ids for c in first] == [c.token_ids for c in again] == [c.token_ids for c in after]
