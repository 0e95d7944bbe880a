"""Releasing a thread's OpenMP workers: the threads really go, come back on demand, and the idle
embedded engine and its callers leave none behind on the CPU."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import torch

from agentrl.utils.openmp import _loaded_libgomp, release_thread_pool

pytestmark = pytest.mark.skipif(not _loaded_libgomp() or (os.cpu_count() or 1) < 2,
                                reason="needs PyTorch on GNU OpenMP and two CPUs")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _parallel_work(threads: int = 2) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(512, 512)
        for _ in range(3):
            a @ a
    finally:
        torch.set_num_threads(before)


def _in_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_release_ends_the_calling_threads_workers_only():
    _parallel_work()
    base = _threads()
    assert release_thread_pool()
    assert _threads() == base - 1  # the one worker of a two-thread pool
    assert release_thread_pool() and _threads() == base - 1  # nothing left to release
    _parallel_work()
    assert _threads() == base  # the next parallel region starts a new worker

    done = threading.Event()
    out = {}

    def other():  # another thread's pool stays while this one releases its own
        _parallel_work()
        out["with_pool"] = _threads()
        done.set()
        time.sleep(0.5)

    t = threading.Thread(target=other)
    t.start()
    done.wait(5)
    release_thread_pool()
    assert _threads() == out["with_pool"] - 1
    t.join()


async def test_the_cpu_engine_leaves_no_idle_workers(tmp_path):
    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.models import load_model

    model, tok = load_model("tiny-qwen2", device="cpu")
    sp = SamplingParams(max_new_tokens=8, ignore_eos=True)
    prompts = [tok.encode(p) for p in ("a b c", "d e f", "g h i")]

    async def idle_at(count: int) -> int:
        deadline = time.monotonic() + 5
        while _threads() != count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return _threads()

    async with EmbeddedEngine(model, tok, max_batch_size=4, max_seq_len=64) as engine:
        await engine.generate(prompts[0], sp)  # starts the engine's thread (and the tokenizer's own threads)

        def work_on_engine_thread() -> int:  # a model this small runs no parallel region; a real one does
            _parallel_work()
            return _threads()

        busy = await asyncio.wrap_future(engine._scheduler.call(work_on_engine_thread))
        assert await idle_at(busy - 1) == busy - 1  # the idle engine thread gave its worker back
        _parallel_work()  # the caller holds a pool, as after loading a model or a training step
        assert _threads() == busy
        outs = await asyncio.gather(*(engine.generate(p, sp) for p in prompts))
        assert all(len(o.token_ids) == 8 for o in outs)
        assert await idle_at(busy - 1) == busy - 1  # the caller's worker went at generate()
