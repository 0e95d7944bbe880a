"""Mixed steps (prefill and decode in one forward pass), chunked prompts and shared group prefixes, on the CPU.

The variable-length attention kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by
the conftest without a GPU) against its PyTorch reference; the engine's mixed steps run with the
reference attention (the CPU default for ``mixed_prefill=True``) and, once, with the kernel. The
scheduler tests drive the worker's step function by hand, so that a prompt can be caught between
two of its chunks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agentrl.engine import SamplingParams
from agentrl.engine.embedded import EmbeddedEngine
from agentrl.engine.embedded import mixed as mixed_step
from agentrl.engine.embedded import prefill_attention as pa
from agentrl.models import load_model

TEXTS = ["Hello there, how are you doing today?", "List three prime numbers.", "The capital of France is",
         "def fib(n):", "Once upon a time"]
GREEDY = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def qwen2():
    return load_model("tiny-qwen2", device="cpu")


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def _teacher_forced(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)


# --- the kernel ---------------------------------------------------------------------------------------

kernel = pytest.mark.skipif(pa.unavailable() is not None or (not torch.cuda.is_available() and not pa.interpreted()),
                            reason="needs Triton (a GPU, or its interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _batch(heads, kv_heads, d, seed=0):
    """Sequences of every kind over a 6-slot cache: a whole prompt, a chunk over a cached prefix, a
    prompt whose first 20 positions sit in another slot, decode rows (position 0 among them)."""
    g = torch.Generator().manual_seed(seed)
    seqs = np.array([[0, 150, 0, 0, 0, 0], [150, 1, 200, 1, 1, 0], [151, 40, 20, 2, 0, 20], [191, 1, 0, 3, 3, 0],
                     [192, 70, 100, 4, 4, 0], [262, 1, 63, 5, 5, 0]], dtype=np.int64)
    q = torch.randn(266, heads, d, generator=g).to(DEVICE)  # rows 263.. belong to no sequence
    caches = torch.randn(2, 7, kv_heads, 300, d, generator=g).to(DEVICE)
    return q, caches, seqs


@kernel
@pytest.mark.parametrize("heads,kv_heads,d", [(14, 2, 64), (4, 4, 32), (8, 2, 32)])
def test_kernel_equals_reference(heads, kv_heads, d):
    q, caches, seqs = _batch(heads, kv_heads, d)
    want = pa.reference(q, caches[0], caches[1], seqs, d**-0.5)
    tiles = pa.tile_table(seqs[:, 1], pa.block_tokens(heads // kv_heads))
    tiles = np.concatenate([tiles[::-1], [[-1, 0]] * 3])  # any order; unused tiles at the end
    out = torch.full_like(q, 7.0)
    got = pa.attention(q, caches[0], caches[1], torch.from_numpy(seqs).to(DEVICE), torch.from_numpy(tiles).to(DEVICE),
                       d**-0.5, out=out)
    torch.testing.assert_close(got[:263], want[:263], atol=2e-6, rtol=1e-5)
    assert bool((got[263:] == 7.0).all())  # rows of no sequence are left alone


@kernel
def test_kernel_reads_only_each_sequences_own_positions():
    """NaN past a sequence's last position, in other slots and in the prefix owner's slot past the
    shared length does not reach any output."""
    q, caches, seqs = _batch(8, 2, 32, seed=3)
    tiles = torch.from_numpy(pa.tile_table(seqs[:, 1], pa.block_tokens(4))).to(DEVICE)
    args = (torch.from_numpy(seqs).to(DEVICE), tiles, 0.2)
    clean = pa.attention(q, *caches.clone(), *args)
    dirty = caches.clone()
    for _, q_len, start, slot, _pslot, plen in seqs.tolist():
        dirty[:, slot, :, start + q_len :] = float("nan")
        dirty[:, slot, :, :plen] = float("nan")  # read from the prefix slot instead
    dirty[:, 0, :, 150:] = float("nan")
    dirty[:, 6] = float("nan")
    got = pa.attention(q, *dirty, *args)
    assert torch.equal(got[:263], clean[:263])


def test_tiles_and_packing():
    assert pa.tile_table(np.array([3, 1, 0, 5]), 2).tolist() == [[0, 0], [0, 2], [1, 0], [3, 0], [3, 2], [3, 4]]
    assert [pa.block_tokens(g) for g in (1, 2, 7, 8, 9)] == [128, 64, 16, 16, 8]
    assert [mixed_step.token_bucket(n) for n in (1, 64, 65, 512, 513, 1025, 2048)] == [64, 64, 128, 512, 640, 1280, 2048]
    step = mixed_step.pack(np.array([5, 6]), np.array([10, 3]), [
        mixed_step.Part(2, np.arange(3), 4, 2, 0, False), mixed_step.Part(3, np.arange(2), 20, 2, 20, True)], block_t=2)
    assert step.tokens.tolist() == [5, 6, 0, 1, 2, 0, 1]
    assert step.positions.tolist() == [10, 3, 4, 5, 6, 20, 21]
    assert step.slots.tolist() == [0, 1, 2, 2, 2, 3, 3]
    assert step.select.tolist() == [0, 1, 6]  # decode rows, then the end of the prompt that ends here
    assert step.seqs.tolist() == [[0, 1, 10, 0, 0, 0], [1, 1, 3, 1, 1, 0], [2, 3, 4, 2, 2, 0], [5, 2, 20, 3, 2, 20]]
    assert sorted(map(tuple, step.tiles.tolist())) == [(0, 0), (1, 0), (2, 0), (2, 2), (3, 0)]
    assert step.tiles[0].tolist() == [3, 0]  # the most positions to read first


# --- the engine -----------------------------------------------------------------------------------------


def _episodes(tok):
    """Five episodes and three more samples of the first prompt (a group)."""
    prompts = [tok.encode(TEXTS[i] + " please" * (2 + 2 * i)) for i in range(5)]
    return prompts + [prompts[0]] * 3


def _run_episodes(engine, tok, prompts, temperature=0.0):
    async def episode(prompt, i):
        turns = []
        for turn in range(3):
            sp = SamplingParams(temperature=temperature, seed=10 * i + turn, max_new_tokens=4 + 2 * turn + i % 3,
                                ignore_eos=True)
            c = await engine.generate(prompt, sp)
            turns.append((list(prompt), c))
            prompt = prompt + c.token_ids + tok.encode(f" tool says {turn}")
        return turns

    async def main():
        async with engine:
            return await asyncio.gather(*(episode(p, i) for i, p in enumerate(prompts)))

    return asyncio.run(main())


def _simulate_graphs(engine):
    runner = engine._scheduler.runner
    runner.use_graphs = True
    runner._record_graph = lambda step, tok: SimpleNamespace(replay=step)
    runner.captured = []  # token buckets of the mixed steps' "graphs"
    runner._record_mixed = lambda step, tok: runner.captured.append(len(tok)) or SimpleNamespace(replay=step)
    runner.capture_after = runner.capture_mixed_after = 2
    return runner


def _watch_admissions(engine) -> list[bool]:
    """Per admission, whether a step was in flight when it was launched."""
    over: list[bool] = []
    s = engine._scheduler
    original = s._admit_mixed

    def watched(new):
        over.append(s._inflight is not None)
        return original(new)

    s._admit_mixed = watched
    return over


@pytest.mark.parametrize("budget,graphs,overlap", [(4096, False, False), (9, False, False), (9, True, True)])
def test_mixed_steps_equal_separate_prefills(qwen2, budget, graphs, overlap):
    """Multi-turn episodes, three of them samples of one prompt, greedy: mixed steps (chunked prompts
    with a small budget, the group's prompt computed once, the simulated CUDA-graph path with padded
    token buckets) give the tokens of separate whole-prompt prefills with the cache off, logprobs
    within 1e-5, and teacher-forced logprobs within 1e-4."""
    model, tok = qwen2
    prompts = _episodes(tok)
    want = _run_episodes(EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=256), tok, prompts)
    engine = EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=256, mixed_prefill=True, prefix_cache=True,
                            prefill_token_budget=budget, overlap=overlap, admit_ahead=overlap)
    assert engine._scheduler.mixed and not engine._scheduler.runner.varlen_kernel
    runner = _simulate_graphs(engine) if graphs else None
    seen = []
    original = engine._scheduler._admit_mixed
    engine._scheduler._admit_mixed = lambda new: seen.append((engine._scheduler.n, engine._scheduler._chunk)) or original(new)
    got = _run_episodes(engine, tok, prompts)
    if graphs:
        assert runner.captured and all(t % 64 == 0 for t in runner.captured)  # padded buckets, replayed
    assert any(n > 0 for n, _ in seen)  # some steps decoded running rows and prefilled together
    if budget < 20:
        assert any(chunk is not None for _, chunk in seen)  # a prompt went in chunks
    assert engine.stats.cached_prompt_tokens > 0
    for a_turns, b_turns in zip(want, got):
        for (_, a), (_, b) in zip(a_turns, b_turns):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    prompt, c = got[5][2]  # a group member's third turn
    torch.testing.assert_close(torch.tensor(c.logprobs), _teacher_forced(model, prompt, c.token_ids), atol=1e-4, rtol=0)


def test_group_samples_compute_their_prompt_once(qwen2):
    """Eight samples of one prompt admitted together: one computes the prompt, the others read it
    from its slot and prefill only their last token; greedy tokens equal ``generate()``'s."""
    model, tok = qwen2
    prompt = tok.encode(TEXTS[1] + " please and thank you" * 6)
    assert len(prompt) > 2 * pa.SEQ_FIELDS + 16
    engine = EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=128, mixed_prefill=True, prefix_cache=True)

    async def main():
        async with engine:
            with engine._scheduler._cv:  # the worker sees all eight at once
                futures = [engine._scheduler.submit(engine._request(prompt, GREEDY, None)) for _ in range(8)]
            return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

    outs = asyncio.run(main())
    assert engine.stats.prefills == 1
    assert engine.stats.cached_prompt_tokens == 7 * (len(prompt) - 1)
    want = _hf_greedy(model, prompt, 8)
    assert all(c.token_ids == want for c in outs)


@pytest.mark.parametrize("overlap", [False, True])
def test_seeded_sampling_in_mixed_steps_is_independent_of_the_batch(qwen2, overlap):
    model, tok = qwen2
    prompt = tok.encode(TEXTS[4] + " please" * 5)
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=1234, ignore_eos=True)

    engine = EmbeddedEngine(model, tok, max_batch_size=8, max_seq_len=128, mixed_prefill=True, overlap=overlap,
                            admit_ahead=overlap, prefill_token_budget=12)
    over = _watch_admissions(engine)

    async def main():
        async with engine:
            alone = await engine.generate(prompt, sp)
            others = [engine.generate(tok.encode(t), sp.replace(seed=i, max_new_tokens=3 + 4 * i))
                      for i, t in enumerate(TEXTS)]
            batched, *_ = await asyncio.gather(engine.generate(prompt, sp), *others)
            before = engine.stats.generated_tokens
            running = asyncio.ensure_future(engine.generate(tok.encode(TEXTS[0]), sp.replace(max_new_tokens=40)))
            while engine.stats.generated_tokens < before + 3:
                await asyncio.sleep(0.001)
            joined = await engine.generate(prompt, sp)  # admitted while another request decodes
            await running
            other_seed = await engine.generate(prompt, sp.replace(seed=99))
        return alone, batched, joined, other_seed

    alone, batched, joined, other_seed = asyncio.run(main())
    assert alone.token_ids == batched.token_ids == joined.token_ids
    assert other_seed.token_ids != alone.token_ids
    assert any(over) == overlap  # with overlap, the joining request's step was launched over a decode step


def test_mixed_steps_through_the_triton_kernel(qwen2):
    """``decode_attention="triton"`` on the CPU: mixed steps run the kernel (in the interpreter)."""
    if pa.unavailable() is not None or not pa.interpreted():
        pytest.skip("needs Triton's interpreter")
    from transformers import AutoModelForCausalLM

    from agentrl.testing import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab_size=512, hidden_size=128,
                                                         num_attention_heads=4)).eval()
    prompts = [[(5 * i + j) % 500 + 3 for j in range(4 + 7 * i)] for i in range(4)] + [[7 + j for j in range(30)]] * 2
    sp = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    engine = EmbeddedEngine(model, max_batch_size=8, max_seq_len=128, pack_weights=False, decode_attention="triton",
                            mixed_prefill=True, prefix_cache=True, prefill_token_budget=16)
    assert engine._scheduler.runner.varlen_kernel

    async def main():
        async with engine:
            return await asyncio.gather(*(engine.generate(p, sp) for p in prompts))

    for p, c in zip(prompts, asyncio.run(main())):
        assert c.token_ids == model.generate(torch.tensor([p]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                             pad_token_id=0)[0, len(p):].tolist()
        torch.testing.assert_close(torch.tensor(c.logprobs), _teacher_forced(model, p, c.token_ids), atol=1e-4, rtol=0)


# --- the scheduler, step by step -------------------------------------------------------------------------


class Driver:
    """Runs the worker's steps on this thread (no worker thread), as ``Scheduler._run`` would."""

    def __init__(self, engine):
        self.engine, self.s = engine, engine._scheduler

    def submit(self, prompt, sp=GREEDY, rid=None):
        return self.s.submit(self.engine._request(prompt, sp, rid))

    def step(self):
        with self.s._cv:
            commands = list(self.s._commands)
            self.s._commands.clear()
            aborts, self.s._abort = self.s._abort, set()
        with torch.inference_mode():
            self.s._step(commands, aborts)

    def until(self, done, limit=500):
        for _ in range(limit):
            if done():
                return
            self.step()
        raise AssertionError("the scheduler did not get there")


def test_a_long_prompt_goes_in_chunks_beside_decoding_rows(qwen2):
    """Budget 8: a 40-token prompt takes five steps, in each of which the running request decodes
    too; when the running request leaves, the partial prompt follows slot n (trading places with
    the parked entry the finished request leaves there); results equal ``generate()``'s."""
    model, tok = qwen2
    engine = EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=128, mixed_prefill=True, prefix_cache=True,
                            prefill_token_budget=8)
    d = Driver(engine)
    short = tok.encode(TEXTS[2] + " again and again" * 4)  # long enough to be parked
    long = tok.encode(TEXTS[0] + " more" * 30)[:40]
    first = d.submit(short, SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True))
    d.until(lambda: d.s.n == 1)
    second = d.submit(long, SamplingParams(temperature=0, max_new_tokens=10, ignore_eos=True))
    prefills, steps = engine.stats.prefills, engine.stats.steps
    dones, slots, parked = [], [], []
    for _ in range(5):
        d.step()
        dones.append(d.s._chunk.done if d.s._chunk else None)
        slots.append(d.s._chunk.slot if d.s._chunk else None)
        parked.append(sorted(d.s._parked))
    assert dones[:4] == [8, 16, 24, 32] and dones[4] is None  # the fifth step ends the prompt
    # the short request ends in the second step, parked in its slot 0; the partial prompt moves down
    # to slot 0 and the parked entry up to slot 1
    assert first.done() and slots[:4] == [1, 0, 0, 0] and parked[:2] == [[], [1]]
    d.until(second.done)
    assert first.result().token_ids == _hf_greedy(model, short, 3)
    assert second.result().token_ids == _hf_greedy(model, long, 10)
    torch.testing.assert_close(torch.tensor(second.result().logprobs), _teacher_forced(model, long, second.result().token_ids),
                               atol=1e-4, rtol=0)
    assert engine.stats.prefills - prefills == 5 and engine.stats.steps - steps == 2 + 9  # two mixed steps decoded


def test_abort_update_and_release_while_a_prompt_is_partial(qwen2):
    model, tok = qwen2
    engine = EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=128, mixed_prefill=True, prefill_token_budget=8)
    d = Driver(engine)
    long = tok.encode(TEXTS[3] + " more" * 40)[:50]
    # abort between two chunks: no tokens, the slot is free again
    fut = d.submit(long, rid="cut")
    d.step()
    assert d.s._chunk is not None and d.s._chunk.done == 8
    d.s.abort("cut")
    d.step()
    c = fut.result()
    assert c.finish_reason == "abort" and c.token_ids == [] and d.s._chunk is None and d.s.reqs[0] is None
    # a weight update between two chunks: the completion reports the version of its first part
    fut = d.submit(long)
    d.step()
    update = d.s.call(lambda: setattr(d.s, "version", d.s.version + 1) or d.s.version)
    d.step()
    assert update.result() == 1 and d.s._chunk is not None  # ran between the chunks
    # release_memory waits for the partial prompt and its decoding, then frees the cache
    release = d.s.call(d.s.release_memory, needs_idle=True)
    d.until(release.done)
    assert fut.done() and fut.result().weight_version == 0 and len(fut.result().token_ids) == 8
    assert not engine._scheduler.runner.kv.allocated
    assert d.submit(long).done() is False
    d.until(lambda: d.s.n == 0 and d.s._chunk is None and not d.s._waiting)
    assert engine._scheduler.runner.kv.allocated  # the next request allocated it again


@pytest.mark.parametrize("graphs", [False, True])
def test_admissions_launched_over_a_decode_step_in_flight(qwen2, graphs):
    """With ``overlap``, a mixed step is launched while the decode step before it is in flight (its
    decode rows' inputs are that step's samples, still on the device) and the next decode step is
    launched before the mixed step is read. Multi-turn episodes, a group among them, greedy, with the
    prefix cache: the tokens equal those of the same engine without overlap (where every step is read
    before the next), logprobs within 1e-5; sampled, each token's logprob is the teacher-forced one
    (seeded draws that do not depend on the batch: the test above, whose joining request is admitted
    over a decode step in flight)."""
    model, tok = qwen2
    prompts = _episodes(tok)

    def engine(overlap, admit_ahead=None):
        e = EmbeddedEngine(model, tok, max_batch_size=12, max_seq_len=256, mixed_prefill=True, prefix_cache=True,
                           prefill_token_budget=24, overlap=overlap,
                           admit_ahead=overlap if admit_ahead is None else admit_ahead)
        if graphs:
            _simulate_graphs(e)
        return e

    want = _run_episodes(engine(False), tok, prompts)
    overlap_only = engine(True, admit_ahead=False)  # the default: decode steps overlap, admissions wait
    over = _watch_admissions(overlap_only)
    assert [[c.token_ids for _, c in t] for t in _run_episodes(overlap_only, tok, prompts)] == \
        [[c.token_ids for _, c in t] for t in want]
    assert over and not any(over)
    pipelined = engine(True)
    over = _watch_admissions(pipelined)
    got = _run_episodes(pipelined, tok, prompts)
    assert any(over)  # some admissions were launched over a decode step in flight
    for a_turns, b_turns in zip(want, got):
        for (_, a), (_, b) in zip(a_turns, b_turns):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    sampled = engine(True)
    over = _watch_admissions(sampled)
    for turns in _run_episodes(sampled, tok, prompts, temperature=1.0):
        for prompt, c in turns:
            torch.testing.assert_close(torch.tensor(c.logprobs), _teacher_forced(model, prompt, c.token_ids),
                                       atol=1e-4, rtol=0)
    assert any(over)


def test_a_step_fits_the_largest_graph(qwen2, monkeypatch):
    """With mixed steps in CUDA graphs (simulated) and a budget of at most the largest graph's tokens,
    a step's running rows count toward it: every step fits a graph and replays it, a long prompt
    going in chunks; the tokens equal those of whole-prompt prefills."""
    from agentrl.engine.embedded.scheduler import Scheduler

    model, tok = qwen2
    monkeypatch.setattr(mixed_step, "GRAPH_TOKENS", 64)
    monkeypatch.setattr(Scheduler, "MIN_STEP_PROMPT_TOKENS", 4)
    prompts = _episodes(tok) + [tok.encode(TEXTS[3] + " more" * 80)[:100]]
    want = _run_episodes(EmbeddedEngine(model, tok, max_batch_size=10, max_seq_len=256), tok, prompts)
    engine = EmbeddedEngine(model, tok, max_batch_size=10, max_seq_len=256, mixed_prefill=True, prefix_cache=True,
                            prefill_token_budget=64, overlap=True, admit_ahead=True)
    runner = _simulate_graphs(engine)
    runner.graph_tokens = engine._scheduler.step_tokens = 64
    totals, graphed = [], []
    launch = runner.launch_mixed

    def counted(tokens, positions, parts, rows):
        handle = launch(tokens, positions, parts, rows)
        totals.append(len(positions) + sum(len(p.tokens) for p in parts))
        graphed.append(runner.last_step_graphed or runner._uses.get(("mixed", mixed_step.token_bucket(totals[-1]),
                                                                      "greedy"), 0) == 1)
        return handle

    runner.launch_mixed = counted
    got = _run_episodes(engine, tok, prompts)
    assert max(totals) <= 64 and all(graphed)
    assert engine.stats.prefills > len(prompts)  # the long prompt (and the first turn) went in several steps
    for a_turns, b_turns in zip(want, got):
        for (_, a), (_, b) in zip(a_turns, b_turns):
            assert a.token_ids == b.token_ids
