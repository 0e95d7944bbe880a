"""Partial rollouts: turns in flight at a weight update are aborted and continued (or waited for)."""

import asyncio

import pytest

from agentrl.engine import Completion, SamplingParams
from agentrl.rollout.async_partial import InterruptibleEngine


class Ticking:
    """Generates one token per tick; an abort returns the tokens so far (as SGLang and the
    embedded engine do). Token values encode the weight version that produced them."""

    def __init__(self, tick=0.01):
        self.tick, self.weight_version = tick, 0
        self._aborted = set()
        self.requests = []

    async def generate(self, input_ids, sampling, *, rid=None):
        self.requests.append((len(input_ids), sampling.max_new_tokens, sampling.seed, self.weight_version))
        start_version, out = self.weight_version, []
        while len(out) < sampling.max_new_tokens:
            await asyncio.sleep(self.tick)
            if rid in self._aborted:
                self._aborted.discard(rid)
                return Completion(out, [-0.5] * len(out), "abort", start_version)
            out.append(100 + self.weight_version)
        return Completion(out, [-0.5] * len(out), "length", start_version)

    async def abort(self, rid=None):
        self._aborted.add(rid)

    async def update_weights(self, weights=None, *, version=None):
        self.weight_version = version if version is not None else self.weight_version + 1
        return self.weight_version

    async def health(self):
        return True


async def test_update_interrupts_and_resumes_the_turn_under_new_weights():
    base = Ticking()
    engine = InterruptibleEngine(base, resume=True)
    turn = asyncio.ensure_future(engine.generate([1, 2, 3], SamplingParams(max_new_tokens=30, seed=5), rid="t"))
    await asyncio.sleep(0.1)
    assert await engine.update_weights(None) == 1
    c = await turn
    assert len(c.token_ids) == 30 and c.finish_reason == "length"
    kept = engine.stats.resumed_tokens
    assert 0 < kept < 30 and engine.stats.resumed == 1 and engine.stats.interrupts == 1
    assert c.token_ids == [100] * kept + [101] * (30 - kept)  # old-weight prefix kept, rest from the new weights
    assert c.weight_version == 0  # the turn counts from its oldest token
    # the continuation: prompt + prefix, the remaining budget, a fresh seed
    (len0, max0, seed0, _), (len1, max1, seed1, v1) = base.requests
    assert (len0, max0, seed0) == (3, 30, 5) and (len1, max1, v1) == (3 + kept, 30 - kept, 1) and seed1 != seed0


async def test_without_partial_rollouts_the_update_waits_for_the_turn():
    base = Ticking()
    engine = InterruptibleEngine(base, resume=False)
    turn = asyncio.ensure_future(engine.generate([1], SamplingParams(max_new_tokens=20), rid="t"))
    await asyncio.sleep(0.05)
    await engine.update_weights(None)
    assert turn.done()  # the update ran only after the turn finished
    c = turn.result()
    assert c.token_ids == [100] * 20 and engine.stats.resumed == 0 and engine.stats.wait_s > 0.05
    # a turn asked for during the update waits for it and runs on the new weights
    later = await engine.generate([1], SamplingParams(max_new_tokens=2))
    assert later.token_ids == [101, 101] and later.weight_version == 1


async def test_a_real_abort_is_not_resumed():
    engine = InterruptibleEngine(Ticking(), resume=True)
    turn = asyncio.ensure_future(engine.generate([1], SamplingParams(max_new_tokens=50), rid="t"))
    await asyncio.sleep(0.05)
    await engine.abort("t")
    c = await turn
    assert c.finish_reason == "abort" and 0 < len(c.token_ids) < 50 and engine.stats.resumed == 0


async def test_embedded_engine_turn_resumes_with_its_prefix_intact():
    from agentrl.engine.embedded import EmbeddedEngine

    async with EmbeddedEngine("tiny-qwen2", max_batch_size=4, max_seq_len=512) as base:
        sampling = SamplingParams(max_new_tokens=300, ignore_eos=True, seed=11)
        straight = await base.generate([1, 2, 3], sampling)
        engine = InterruptibleEngine(base)
        before = base.stats.generated_tokens
        turn = asyncio.ensure_future(engine.generate([1, 2, 3], sampling, rid="r"))
        while base.stats.generated_tokens < before + 20:
            await asyncio.sleep(0.01)
        weights = {k: v.clone() for k, v in base.model.state_dict().items()}
        await engine.update_weights(weights)  # same values, new version
        c = await turn
    kept = engine.stats.resumed_tokens
    assert engine.stats.resumed == 1 and 0 < kept < 300
    assert len(c.token_ids) == 300 and c.weight_version == 0
    assert c.token_ids[:kept] == straight.token_ids[:kept]  # the aborted piece is what sampling gave
    assert c.logprobs[:kept] == pytest.approx(straight.logprobs[:kept], abs=1e-5)


async def test_in_flight_updates_neither_abort_nor_wait():
    base = Ticking()
    engine = InterruptibleEngine(base, resume=True, in_flight=True)
    turn = asyncio.ensure_future(engine.generate([1, 2, 3], SamplingParams(max_new_tokens=30), rid="t"))
    await asyncio.sleep(0.1)
    assert await engine.update_weights(None) == 1
    assert not turn.done()  # the update did not wait for the turn
    c = await turn
    old = c.token_ids.count(100)
    assert 0 < old < 30 and c.token_ids == [100] * old + [101] * (30 - old)  # one request, weights changed under it
    assert len(base.requests) == 1 and c.weight_version == 0
    assert (engine.stats.carried, engine.stats.resumed, engine.stats.interrupts) == (1, 0, 1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_embedded_engine_turn_goes_on_through_an_in_flight_update(device):
    """The same weights loaded mid-turn: the turn is one request and samples exactly what it would
    have without the update (nothing prefilled again; on CUDA the decode graphs stay valid)."""
    asyncio.run(_turn_through_an_in_flight_update(device))


async def _turn_through_an_in_flight_update(device):
    from agentrl.engine.embedded import EmbeddedEngine

    async with EmbeddedEngine("tiny-qwen2", device=device, max_batch_size=4, max_seq_len=512) as base:
        sampling = SamplingParams(max_new_tokens=300, ignore_eos=True, seed=11)
        straight = await base.generate([1, 2, 3], sampling)
        engine = InterruptibleEngine(base, in_flight=True)
        before, prefills = base.stats.generated_tokens, base.stats.prefills
        turn = asyncio.ensure_future(engine.generate([1, 2, 3], sampling, rid="r"))
        while base.stats.generated_tokens < before + 20:
            await asyncio.sleep(0.01)
        weights = {k: v.clone() for k, v in base.model.state_dict().items()}
        assert await engine.update_weights(weights) == 1
        assert base.stats.generated_tokens < before + 300  # loaded while the turn was running
        c = await turn
    assert engine.stats.carried == 1 and engine.stats.resumed == 0
    assert base.stats.prefills == prefills + 1
    assert c.token_ids == straight.token_ids and c.weight_version == 0
    assert c.logprobs == pytest.approx(straight.logprobs, abs=1e-5)
