"""The embedded engine against transformers on the CPU (float32): outputs, logprobs, batching, control."""

from __future__ import annotations

import asyncio

import pytest
import torch

from agentrl.engine import EngineError, SamplingParams
from agentrl.engine.embedded import EmbeddedEngine, InvalidRequest
from agentrl.models import load_model

PROMPTS = [
    "Hello there, how are you doing today?",
    "List three prime numbers.",
    "The capital of France is",
    "def fib(n):",
    "Once upon a time",
    "1 + 1 =",
    "Translate 'cat' to German:",
    "Why is the sky blue?",
]

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=16)


@pytest.fixture(scope="module", params=["tiny-qwen2", "tiny-llama", "tiny-qwen3"])
def tiny(request):
    model, tok = load_model(request.param, device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def qwen2():
    return load_model("tiny-qwen2", device="cpu")


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def _teacher_forced_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)


@pytest.mark.parametrize("backend,pack", [("fast", True), ("fast", False), ("hf", None)])
async def test_greedy_equals_transformers_generate(tiny, backend, pack):
    model, tok = tiny
    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=128, backend=backend, pack_weights=pack) as engine:
        assert engine.backend == backend
        assert engine.config.pack_weights is (backend == "fast" and pack is not False)  # packed by default on the CPU
        for text in PROMPTS[:3]:
            prompt = tok.encode(text)
            c = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24))
            assert c.token_ids == _hf_greedy(model, prompt, 24)


@pytest.mark.parametrize("backend,pack", [("fast", True), ("fast", False), ("hf", None)])
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
async def test_logprobs_equal_teacher_forced_log_softmax(qwen2, backend, pack, temperature):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0])
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128, backend=backend, pack_weights=pack) as engine:
        c = await engine.generate(prompt, SamplingParams(temperature=temperature, max_new_tokens=20, seed=3, ignore_eos=True))
    assert len(c.token_ids) == len(c.logprobs) == 20
    ref = _teacher_forced_logprobs(model, prompt, c.token_ids, temperature)
    assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


async def test_top_k_top_p_logprobs_are_of_the_unfiltered_distribution(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[1])
    sp = SamplingParams(temperature=0.8, top_k=5, top_p=0.9, max_new_tokens=12, seed=0, ignore_eos=True)
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128) as engine:
        c = await engine.generate(prompt, sp)
    ref = _teacher_forced_logprobs(model, prompt, c.token_ids, 0.8)
    assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1 : -1]
    top5 = logits.topk(5, dim=-1).indices
    assert all(t in row.tolist() for t, row in zip(c.token_ids, top5))


@pytest.mark.parametrize("backend,overlap", [("fast", False), ("fast", True), ("hf", False)])
async def test_16_concurrent_requests_equal_sequential(qwen2, backend, overlap):
    """Different prompt lengths and budgets, more requests than slots: queueing, joins and leaves.
    With ``overlap`` the next step is launched before the current one is read (zombie rows)."""
    model, tok = qwen2
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))) for i in range(16)]
    params = [SamplingParams(temperature=0, max_new_tokens=6 + (i * 5) % 17, ignore_eos=True) for i in range(16)]
    async with EmbeddedEngine(model, tok, max_batch_size=6, max_seq_len=128, backend=backend, overlap=overlap) as engine:
        sequential = [await engine.generate(p, s) for p, s in zip(prompts, params)]
        concurrent = await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params)))
        steps = engine.stats.steps
    for a, b in zip(sequential, concurrent):
        assert a.token_ids == b.token_ids
        assert a.finish_reason == b.finish_reason == "length"
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    assert steps < sum(s.max_new_tokens for s in params) * 2  # the concurrent run shared steps


async def test_admission_batching_shares_prefills_and_keeps_results(qwen2):
    """``admit_wait_steps``: requests arriving one by one while others decode are prefilled
    together (fewer prefills), with the same greedy tokens as requests admitted at once."""
    model, tok = qwen2
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)] + " " * i) for i in range(9)]
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    results, prefills = [], []
    for wait in (0, 64):  # 64: the arrivals' window, however many steps a busy machine lets pass between them
        async with EmbeddedEngine(model, tok, max_batch_size=64, max_seq_len=512, admit_wait_steps=wait) as engine:
            first = asyncio.ensure_future(engine.generate(prompts[0], SamplingParams(temperature=0, max_new_tokens=400,
                                                                                      ignore_eos=True)))
            while engine.stats.steps == 0:  # the long request is decoding (until well after the last arrival)
                await asyncio.sleep(0.001)
            later = []
            for p in prompts[1:]:  # arrivals spread over decode steps, at least two apart
                later.append(asyncio.ensure_future(engine.generate(p, params)))
                steps = engine.stats.steps
                while engine.stats.steps < steps + 2:
                    await asyncio.sleep(0.001)
            outs = await asyncio.gather(first, *later)
            results.append([c.token_ids for c in outs])
            prefills.append(engine.stats.prefills)
    assert results[0] == results[1]
    assert prefills[0] >= 7 and prefills[1] <= 3, prefills  # (two arrivals may share a step by chance)
    with pytest.raises(ValueError, match="admit_wait_steps"):
        EmbeddedEngine(model, tok, admit_wait_steps=-1)
    assert EmbeddedEngine(model, tok).config.admit_wait_steps == 0  # CPU default: admit at once


@pytest.mark.parametrize("overlap", [False, True])
async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(qwen2, overlap):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[4])
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=1234, ignore_eos=True)
    async with EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=128, overlap=overlap) as engine:
        alone = await engine.generate(prompt, sp)
        again = await engine.generate(prompt, sp)
        others = [engine.generate(tok.encode(t), sp.replace(seed=i)) for i, t in enumerate(PROMPTS[:5])]
        batched, *_ = await asyncio.gather(engine.generate(prompt, sp), *others)
        other_seed = await engine.generate(prompt, sp.replace(seed=99))
    assert alone.token_ids == again.token_ids == batched.token_ids
    assert other_seed.token_ids != alone.token_ids


async def test_abort_mid_generation_returns_partial_tokens(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0])
    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=4096, backend="hf") as engine:
        long = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_new_tokens=3000, ignore_eos=True), rid="long"))
        other = asyncio.ensure_future(engine.generate(prompt, SamplingParams(max_new_tokens=8, ignore_eos=True)))
        while engine.stats.generated_tokens < 20:
            await asyncio.sleep(0.01)
        await engine.abort("long")
        c = await long
        assert c.finish_reason == "abort"
        assert 0 < len(c.token_ids) < 3000 and len(c.logprobs) == len(c.token_ids)
        assert (await other).finish_reason == "length"
        # the engine keeps serving, and abort of an unknown rid is a no-op
        await engine.abort("nope")
        assert len((await engine.generate(prompt, SamplingParams(max_new_tokens=3))).token_ids) == 3


async def test_abort_all_and_queued_requests(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0])
    async with EmbeddedEngine(model, tok, max_batch_size=1, max_seq_len=4096, overlap=True) as engine:
        sp = SamplingParams(max_new_tokens=3000, ignore_eos=True)
        tasks = [asyncio.ensure_future(engine.generate(prompt, sp)) for _ in range(3)]
        while engine.stats.generated_tokens < 5:
            await asyncio.sleep(0.01)
        await engine.abort()
        results = await asyncio.gather(*tasks)
    assert [r.finish_reason for r in results] == ["abort"] * 3
    assert len(results[0].token_ids) > 0 and results[1].token_ids == results[2].token_ids == []


async def test_waiting_requests_are_admitted_by_priority_then_arrival(qwen2):
    """With one slot busy, queued requests start lowest priority first (the async loop's older
    rollout), then in arrival order; without priorities the queue stays first come, first served."""
    from agentrl.engine import request_priority

    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0])
    order: list[str] = []
    async with EmbeddedEngine(model, tok, max_batch_size=1, max_seq_len=4096) as engine:
        async def one(name: str, priority: int, n: int):
            with request_priority(priority):
                await engine.generate(prompt, SamplingParams(max_new_tokens=n, ignore_eos=True))
            order.append(name)

        first = asyncio.ensure_future(one("running", 9, 40))
        while engine.stats.generated_tokens < 2:  # it holds the one slot
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(one(name, priority, 3))
                  for name, priority in [("b5", 5), ("a1", 1), ("c5", 5), ("d0", 0), ("e1", 1)]]
        await asyncio.gather(first, *queued)
    assert order == ["running", "d0", "a1", "e1", "b5", "c5"]


async def test_cancelled_generate_frees_its_slot(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0])
    async with EmbeddedEngine(model, tok, max_batch_size=1, max_seq_len=4096) as engine:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.generate(prompt, SamplingParams(max_new_tokens=3000, ignore_eos=True)), 0.3)
        c = await asyncio.wait_for(engine.generate(prompt, SamplingParams(max_new_tokens=4)), 30)
        assert len(c.token_ids) == 4


async def test_update_weights_changes_outputs_and_bumps_version(tmp_path):
    from agentrl.testing import make_tiny_model

    model, tok = load_model("tiny-qwen2", device="cpu")
    other_path = make_tiny_model(tmp_path / "other", "qwen2", seed=1)
    other = load_model(str(other_path), device="cpu", with_tokenizer=False)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = tok.encode(PROMPTS[2])
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128) as engine:
        assert engine.config.pack_weights  # so every update below must repack the weights
        before = await engine.generate(prompt, GREEDY)
        assert engine.weight_version == 0 and before.weight_version == 0
        assert await engine.update_weights(other.state_dict()) == 1
        after = await engine.generate(prompt, GREEDY)
        assert after.weight_version == 1 and after.token_ids != before.token_ids
        assert after.token_ids == _hf_greedy(other, prompt, 16)
        # from a folder, with an explicit version
        assert await engine.update_weights(str(other_path), version=7) == 7
        assert (await engine.generate(prompt, GREEDY)).token_ids == after.token_ids
        # the colocated case: tensors are the model's own -> nothing copied, version still bumps
        assert await engine.update_weights(model.state_dict()) == 8
        # in-place change by a "trainer" sharing the model, then update_weights() with no weights
        model.load_state_dict(original)
        assert await engine.update_weights() == 9
        assert (await engine.generate(prompt, GREEDY)).token_ids == before.token_ids


async def test_update_weights_rejects_unknown_names_and_shapes(qwen2):
    model, tok = qwen2
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128) as engine:
        with pytest.raises(ValueError, match="did you mean 'model.norm.weight'"):
            await engine.update_weights({"model.norm.weigth": torch.ones(64)})
        with pytest.raises(ValueError, match="expected"):
            await engine.update_weights({"model.norm.weight": torch.ones(3)})
        assert engine.weight_version == 0


@pytest.mark.parametrize("overlap", [False, True])
async def test_stop_strings_stop_ids_eos_and_lengths(qwen2, overlap):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[3])
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128, overlap=overlap) as engine:
        free = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True))
        assert free.finish_reason == "length" and len(free.token_ids) == 24
        # a stop string taken from the middle of the free-running text
        text = tok.decode(free.token_ids[8:11])
        stop = text[len(text) // 2 :][:4] or text
        c = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24, stop=[stop], ignore_eos=True))
        assert c.finish_reason == "stop" and c.matched_stop == stop
        assert c.token_ids == free.token_ids[: len(c.token_ids)]
        assert stop in tok.decode(c.token_ids) and stop not in tok.decode(c.token_ids[:-1])
        # a stop token id: kept in the output
        target = free.token_ids[5]
        c = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24, stop_token_ids=[target], ignore_eos=True))
        first = free.token_ids.index(target)
        assert c.token_ids == free.token_ids[: first + 1] and c.matched_stop == target and c.finish_reason == "stop"
        # max_new_tokens = 0, and a cap by max_seq_len
        assert (await engine.generate(prompt, SamplingParams(max_new_tokens=0))).token_ids == []
        long_prompt = (prompt * 40)[:120]
        c = await engine.generate(long_prompt, SamplingParams(max_new_tokens=50, ignore_eos=True))
        assert len(c.token_ids) == 8 and c.finish_reason == "length"


async def test_eos_stops_unless_ignore_eos():
    model, tok = load_model("tiny-qwen2", device="cpu")
    prompt = tok.encode(PROMPTS[5])
    probe = _hf_greedy(model, prompt, 12)
    model.generation_config.eos_token_id = probe[3]  # make the 4th greedy token an end-of-sequence token
    first = probe.index(probe[3])
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128) as engine:
        assert probe[3] in engine.eos_token_ids
        c = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=12))
        assert c.token_ids == probe[: first + 1] and c.finish_reason == "stop" and c.matched_stop == probe[3]
        c = await engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True))
        assert c.token_ids == probe and c.finish_reason == "length"


async def test_bad_requests_fail_clearly(qwen2):
    model, tok = qwen2
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=64) as engine:
        vocab = engine.vocab_size
        with pytest.raises(InvalidRequest, match=rf"token id {vocab} at position 1 is outside the vocabulary"):
            await engine.generate([1, vocab, 3], GREEDY)
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            await engine.generate([-1], GREEDY)
        with pytest.raises(InvalidRequest, match="does not fit max_seq_len=64"):
            await engine.generate([5] * 64, GREEDY)
        with pytest.raises(InvalidRequest, match="empty"):
            await engine.generate([], GREEDY)
        with pytest.raises(InvalidRequest, match="top_p"):
            await engine.generate([1, 2], SamplingParams(top_p=0.0))
        with pytest.raises(ValueError):  # InvalidRequest is a ValueError too
            await engine.generate(["a"], GREEDY)
        assert await engine.health()
        assert len((await engine.generate([1, 2], GREEDY)).token_ids) == 16
    with pytest.raises(EngineError, match="closed"):
        await engine.generate([1, 2], GREEDY)
    async with EmbeddedEngine(model, None, max_batch_size=1, max_seq_len=64) as engine:
        with pytest.raises(InvalidRequest, match="tokenizer"):
            await engine.generate([1, 2], SamplingParams(stop=["x"]))


async def test_release_and_resume_memory(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[2])
    async with EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=128) as engine:
        a = await engine.generate(prompt, GREEDY)
        await engine.release_memory()
        assert not engine._scheduler.runner.kv.allocated
        b = await engine.generate(prompt, GREEDY)  # allocates again
        await engine.release_memory()
        await engine.resume_memory()
        assert engine._scheduler.runner.kv.allocated
        assert a.token_ids == b.token_ids == (await engine.generate(prompt, GREEDY)).token_ids


async def test_any_causal_lm_uses_the_hf_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=2)).eval()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    async with EmbeddedEngine(model, max_batch_size=2, max_seq_len=128) as engine:
        assert engine.backend == "hf" and not engine.config.pack_weights
        outs = await asyncio.gather(*(engine.generate(p, SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True)) for p in prompts))
    for p, c in zip(prompts, outs):
        ref = model.generate(torch.tensor([p]), max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        assert c.token_ids == ref
    with pytest.raises(ValueError, match="no fast path"):
        EmbeddedEngine(model, max_batch_size=1, max_seq_len=64, backend="fast")


@pytest.mark.parametrize("overlap", [False, True])
async def test_graph_buffers_and_pipelining_simulated_on_cpu(qwen2, overlap):
    """The CUDA-graph decode path (padded batch/length buckets, sampling in the graph, tokens kept
    on the device between steps, two host buffers) with "graphs" that just run the step eagerly."""
    from types import SimpleNamespace

    model, tok = qwen2
    prompts = [tok.encode(t) for t in PROMPTS[:7]]
    params = [SamplingParams(temperature=[0, 0.8, 1.0][i % 3], top_k=5 if i == 4 else -1, max_new_tokens=5 + 3 * i,
                             seed=i, ignore_eos=True) for i in range(7)]
    results = []
    for graphs in (False, True):
        engine = EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=256, overlap=overlap)
        runner = engine._scheduler.runner
        if graphs:
            runner.use_graphs = True
            runner._record_graph = lambda step, tok: SimpleNamespace(replay=step)
        async with engine:
            results.append(await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, params))))
            if graphs:
                assert {key[2] for key in runner._uses} == {"greedy", "plain", "logits"}
                assert {key[0] for key in runner._uses} <= {1, 2, 4, 8} and all(key[1] % 128 == 0 for key in runner._uses)
                assert all((key in runner._graphs) == (uses >= 3) for key, uses in runner._uses.items())  # rare: eager
    for eager, graphed in zip(*results):
        assert eager.token_ids == graphed.token_ids
        assert torch.allclose(torch.tensor(eager.logprobs), torch.tensor(graphed.logprobs), atol=1e-5)


@pytest.mark.parametrize("graphs,slots,overlap", [(False, 8, False), (True, 8, False), (True, 8, True), (False, 4, False)])
async def test_prefix_cache_continues_turns_with_the_same_results(qwen2, graphs, slots, overlap):
    """Multi-turn episodes: each turn's prompt extends the previous turn's prompt + completion; with
    the prefix cache only the new tokens are prefilled, and tokens and logprobs stay those of a full
    prefill (and of transformers' teacher-forced forward). Also through the simulated CUDA-graph path,
    whose padding rows must not touch parked keys/values, and with overlapped steps (a finished row
    is computed once more, so its slot holds one more token than its prompt + completion). With 8 slots the next turns find their
    prefixes (swapped out of the way of other arrivals); with 4 slots for 6 episodes, queued requests
    take every freed slot and parked prefixes are evicted before they are used."""
    from types import SimpleNamespace

    model, tok = qwen2
    episodes = [tok.encode(PROMPTS[i % len(PROMPTS)] + " please" * (3 + i)) for i in range(6)]
    results, cached = [], []
    for prefix_cache in (False, True):
        engine = EmbeddedEngine(model, tok, max_batch_size=slots, max_seq_len=256, prefix_cache=prefix_cache,
                                overlap=overlap)
        if graphs:
            runner = engine._scheduler.runner
            runner.use_graphs = True
            runner._record_graph = lambda step, tok: SimpleNamespace(replay=step)

        async def episode(engine, prompt, i):
            turns = []
            for turn in range(3):
                sp = SamplingParams(temperature=0 if i % 2 else 0.9, seed=10 * i + turn, max_new_tokens=6 + 2 * turn,
                                    ignore_eos=True)
                c = await engine.generate(prompt, sp)
                turns.append((list(prompt), c))
                prompt = prompt + c.token_ids + tok.encode(f" tool says {turn}")  # the next turn's context
            return turns

        async with engine:
            results.append(await asyncio.gather(*(episode(engine, p, i) for i, p in enumerate(episodes))))
            cached.append(engine.stats.cached_prompt_tokens)
    assert cached[0] == 0 and (cached[1] > 0 or slots < len(episodes))
    for off, on in zip(*results):
        for (_, a), (_, b) in zip(off, on):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    prompt, c = results[1][1][2]  # a greedy third turn, served from the cache
    want = _teacher_forced_logprobs(model, prompt, c.token_ids, 0)
    torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=0)


async def test_bf16_on_the_cpu_samples_with_the_bf16_models_logprobs(tmp_path):
    """``dtype=bfloat16`` on the CPU (``--engine-dtype bfloat16``): the engine runs in bf16, and the
    logprobs it returns are those of the bf16 model's teacher-forced forward (to bf16 precision)."""
    from agentrl.testing import make_tiny_model

    path = make_tiny_model(tmp_path / "m", "qwen2")
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, ignore_eos=True, seed=3)
    async with EmbeddedEngine(str(path), device="cpu", dtype="bfloat16", max_batch_size=4, max_seq_len=128) as engine:
        assert engine.dtype == torch.bfloat16 and engine.backend == "fast"
        prompts = [engine.tokenizer.encode(p) for p in PROMPTS[:3]]
        outs = await asyncio.gather(*(engine.generate(p, sp) for p in prompts))
        for prompt, c in zip(prompts, outs):
            assert len(c.token_ids) == 12
            want = _teacher_forced_logprobs(engine.model, prompt, c.token_ids, 1.0)
            torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=0.05, rtol=0)


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-qwen3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_unpacked_logits(name, dtype):
    """oneDNN-packed projections and head (biases and q/k norms included) give the logits of the plain
    forward, for a prefill and for decode steps of several batch sizes, and follow a weight change."""
    from agentrl.engine.embedded.fast_model import FastLM
    from agentrl.engine.embedded.kv_cache import KVCache

    from agentrl.utils import cpu_features

    if dtype == torch.bfloat16 and cpu_features.bf16_packing_unsupported():
        pytest.skip(cpu_features.bf16_packing_unsupported())  # tests/engine/test_cpu_features.py covers this CPU
    model, tok = load_model(name, device="cpu")
    model = model.to(dtype)
    plain, packed = FastLM(model, max_seq_len=64), FastLM(model, max_seq_len=64, pack=8)
    assert packed.layers[0].o_w.is_mkldnn and packed.head_packed is not None
    tol = 1e-4 if dtype == torch.float32 else 5e-2

    def run(lm):
        kv = KVCache(n_layers=lm.n_layers, n_slots=8, n_kv_heads=lm.n_kv_heads, max_len=64, head_dim=lm.head_dim,
                     dtype=dtype, device=torch.device("cpu"))
        kv.allocate()
        kv.ensure_clean(8, 64)
        prompts = [tok.encode(p) for p in PROMPTS[:8]]
        with torch.no_grad():
            out = [lm.prefill(kv, torch.tensor([t for p in prompts for t in p]),
                              torch.tensor([i for p in prompts for i in range(len(p))]),
                              torch.tensor([s for s, p in enumerate(prompts) for _ in p]), [len(p) for p in prompts])]
            for b in (1, 3, 8):
                pos = torch.tensor([len(p) for p in prompts[:b]])
                out.append(lm.decode(kv, torch.arange(5, 5 + b), pos, int(pos.max()) + 1))
        return out

    for got, want in zip(run(packed), run(plain)):
        torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    before = run(packed)
    packed.refresh()
    plain.refresh()
    for stale, got, want in zip(before, run(packed), run(plain)):
        torch.testing.assert_close(got.float(), want.float(), atol=tol * 10, rtol=0)
        assert not torch.allclose(stale.float(), want.float(), atol=tol * 10)


async def test_packed_weights_refuse_what_they_cannot_serve(qwen2):
    model, tok = qwen2
    with pytest.raises(ValueError, match="compile"):
        EmbeddedEngine(model, tok, max_batch_size=2, max_seq_len=64, pack_weights=True, compile=True)
    half = load_model("tiny-qwen2", device="cpu", with_tokenizer=False).to(torch.float16)
    with pytest.raises(ValueError, match="float16"):
        EmbeddedEngine(half, tok, max_batch_size=2, max_seq_len=64, pack_weights=True)
    engine = EmbeddedEngine(half, tok, max_batch_size=2, max_seq_len=64)
    assert engine.config.pack_weights is False  # the default falls back to the plain weights


def test_prefill_over_cached_prefixes_matches_a_full_prefill(qwen2):
    """One prefill of prompts whose slots hold cached prefixes of different lengths (none, short,
    long) gives the logits and keys/values of prefilling every prompt whole."""
    from agentrl.engine.embedded.fast_model import FastLM
    from agentrl.engine.embedded.kv_cache import KVCache

    model, tok = qwen2
    lm = FastLM(model, max_seq_len=128)
    prompts = [tok.encode(PROMPTS[i] + " again" * (4 * i + 2)) for i in range(3)]
    cached = [0, 9, len(prompts[2]) - 3]

    def cache() -> KVCache:
        kv = KVCache(n_layers=lm.n_layers, n_slots=4, n_kv_heads=lm.n_kv_heads, max_len=128, head_dim=lm.head_dim,
                     dtype=torch.float32, device=torch.device("cpu"))
        kv.allocate()
        kv.data.fill_(float("nan"))  # unwritten positions must never reach a result
        return kv

    def prefill(kv, slots, parts, starts, prefix=None):
        tokens = torch.tensor([t for p in parts for t in p])
        positions = torch.tensor([s + i for p, s in zip(parts, starts) for i in range(len(p))])
        slot_ids = torch.tensor([slot for slot, p in zip(slots, parts) for _ in p])
        kv.ensure_clean_slots(slots, [s + len(p) for p, s in zip(parts, starts)])
        with torch.no_grad():
            return lm.prefill(kv, tokens, positions, slot_ids, [len(p) for p in parts], prefix=prefix)

    full_kv = cache()
    want = prefill(full_kv, [0, 1, 2], prompts, [0, 0, 0])
    longest = max(len(p) for p in prompts)
    per_prompt = longest * 2 * lm.n_heads * lm.head_dim * 4
    for bound in (1 << 30, 2 * per_prompt, 1):  # all prompts in one attention call, two calls, one per prompt
        lm.PREFIX_ATTENTION_BYTES = bound
        kv = cache()
        prefill(kv, [1, 2], [prompts[1][:9], prompts[2][: cached[2]]], [0, 0])  # the cached prefixes
        got = prefill(kv, [0, 1, 2], [p[c:] for p, c in zip(prompts, cached)], cached,
                      prefix=list(zip([0, 1, 2], cached)))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        for slot, p in enumerate(prompts):
            torch.testing.assert_close(kv.data[:, :, slot, :, : len(p)], full_kv.data[:, :, slot, :, : len(p)],
                                       atol=1e-5, rtol=0)


async def test_prefix_cache_is_dropped_at_a_weight_update_and_a_flush(qwen2):
    model, tok = qwen2
    prompt = tok.encode(PROMPTS[0] + " and more" * 8)
    sp = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)
    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=256, prefix_cache=True) as engine:
        first = await engine.generate(prompt, sp)
        await engine.generate(prompt + first.token_ids, sp)
        reused = engine.stats.cached_prompt_tokens
        assert reused == len(prompt) + len(first.token_ids) - 1  # all but the last token was in the cache
        await engine.update_weights()
        second = await engine.generate(prompt + first.token_ids, sp)
        assert engine.stats.cached_prompt_tokens == reused  # nothing reused across the update
        await engine.flush_cache()  # agentrl serve's /flush_cache
        await engine.generate(prompt + first.token_ids + second.token_ids, sp)
        assert engine.stats.cached_prompt_tokens == reused


def test_engine_satisfies_the_engine_protocol(qwen2):
    from agentrl.engine import Engine

    engine = EmbeddedEngine(qwen2[0], qwen2[1], max_batch_size=1, max_seq_len=32)
    assert isinstance(engine, Engine)
    assert engine.config.max_batch_size == 1 and engine.config.cuda_graphs is False


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.mark.slow  # ~10 s on an idle 2-core CPU, several times that on a busy one
async def test_smollm2_greedy_and_logprobs_equal_transformers(smollm2):
    """The real pretrained model (float32, CPU): token-for-token greedy equality and logprobs."""
    model, tok = smollm2
    chats = [[{"role": "user", "content": q}] for q in ("What is 7 times 8?", "Name a colour of the sky.")]
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in chats]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) else list(p) for p in prompts]
    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=256) as engine:
        assert engine.backend == "fast"
        outs = await asyncio.gather(*(engine.generate(p, SamplingParams(temperature=0, max_new_tokens=24)) for p in prompts))
    for p, c in zip(prompts, outs):
        assert c.token_ids == _hf_greedy(model, p, 24)
        ref = _teacher_forced_logprobs(model, p, c.token_ids, 0.0)
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overlap", [False, True])
async def test_metrics_split_the_engine_time(qwen2, overlap):
    """Prefill, launch and decode seconds add up within the worker's busy time, also when read from
    another thread mid-step and when decode steps overlap; on the CPU every step is eager and nothing
    is captured."""
    model, tok = qwen2
    reads = []
    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=128, overlap=overlap) as engine:
        gen = asyncio.gather(*(engine.generate(tok.encode(p), SamplingParams(max_new_tokens=24, ignore_eos=True))
                               for p in PROMPTS[:4]))
        while not gen.done():
            reads.append(await asyncio.to_thread(engine.metrics))
        await gen
        reads.append(engine.metrics())
    m = reads[-1]
    assert len(reads) > 5
    assert m["engine/prefill_s"] > 0 and m["engine/decode_s"] > 0 and m["engine/launch_s"] > 0
    for r in reads:
        assert r["engine/prefill_s"] + r["engine/decode_s"] <= r["engine/busy_s"] + 1e-9
    assert m["engine/launch_s"] <= m["engine/decode_s"]  # a step's launch counts before its decode time
    assert m["engine/eager_s"] == pytest.approx(m["engine/launch_s"])
    assert m["engine/capture_s"] == 0.0 and m["engine/graph_steps"] == 0
