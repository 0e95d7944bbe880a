"""The SGLang client against `agentrl serve` (in-process servers over real sockets)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI

from agentrl.engine.base import Completion, Engine, EngineError, SamplingParams
from agentrl.engine.server import BackgroundServer, create_app
from agentrl.engine.sglang import SGLangEngine
from agentrl.testing import FakeEngine


def next_ids(ids, sampling):
    return [ids[-1] + 1, ids[-1] + 2, 2]


class CountingEngine(FakeEngine):
    async def update_weights(self, weights=None, *, version=None):
        self.loaded = getattr(self, "loaded", []) + [sorted(weights)]  # the tensors the server read, by name
        return await super().update_weights(weights, version=version)


@pytest.fixture
def tmp_path(tmp_path):
    """A model folder with one weight file: the server reads it and hands the engine its tensors."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    return tmp_path


def serve(engine=None, **kwargs) -> BackgroundServer:
    engine = engine or CountingEngine(responder=next_ids)
    server = BackgroundServer(create_app(engine, None, model_path="m", vocab_size=1000, **kwargs)).start()
    server.engine = engine
    return server


@pytest.fixture
def server():
    s = serve()
    yield s
    s.stop()


@pytest.fixture
def two_servers():
    a, b = serve(CountingEngine(responder=next_ids, latency=0.05)), serve(CountingEngine(responder=next_ids, latency=0.05))
    yield a, b
    a.stop()
    b.stop()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def test_is_an_engine():
    assert isinstance(SGLangEngine("http://h:1"), Engine)


def test_urls_are_normalised_and_arguments_checked():
    assert SGLangEngine(["localhost:30000/", "http://h:1"]).urls == ["http://localhost:30000", "http://h:1"]
    with pytest.raises(ValueError, match="at least one"):
        SGLangEngine([])
    with pytest.raises(ValueError, match="policy"):
        SGLangEngine("http://h:1", policy="fastest")


async def test_generate_parses_tokens_logprobs_and_finish(server):
    async with SGLangEngine(server.url) as engine:
        c = await engine.generate([5, 6, 7], SamplingParams(max_new_tokens=8, temperature=0.7), rid="r1")
        assert c == Completion([8, 9, 2], [-0.1, -0.2, -0.3], "stop", 0, 3, 2)
        short = await engine.generate([5], SamplingParams(max_new_tokens=2))
        assert short.token_ids == [6, 7] and short.finish_reason == "length" and short.matched_stop is None
    ids, sampling = server.engine.requests[0]
    assert ids == [5, 6, 7] and sampling == SamplingParams(max_new_tokens=8, temperature=0.7)


async def test_stop_string_finish_comes_back_as_matched_stop():
    engine = FakeEngine(responder=lambda ids, sp: Completion([4, 5], [-1.0, -2.0], "stop", prompt_tokens=1,
                                                             matched_stop="</a>"))
    with serve(engine) as s:
        async with SGLangEngine(s.url) as client:
            c = await client.generate([1], SamplingParams(stop=["</a>"]))
    assert c.matched_stop == "</a>" and c.finish_reason == "stop" and c.logprobs == [-1.0, -2.0]


async def test_bad_request_is_an_engine_error_without_retries(server):
    async with SGLangEngine(server.url, backoff=0.01) as engine:
        with pytest.raises(EngineError, match=r"HTTP 400.*out of range"):
            await engine.generate([5000], SamplingParams())
        with pytest.raises(ValueError, match="empty"):
            await engine.generate([], SamplingParams())
    assert engine.num_retries == 0


async def test_unreachable_server_fails_clearly_after_the_last_retry():
    url = dead_url()
    engine = SGLangEngine(url, max_retries=3, backoff=0.01, connect_timeout=1)
    with pytest.raises(EngineError) as exc:
        await engine.generate([1], SamplingParams())
    message = str(exc.value)
    assert "after 4 attempts" in message and url in message and "ConnectError" in message
    assert engine.num_retries == 3
    assert await engine.health() is False
    await engine.aclose()


async def test_a_dead_server_among_live_ones_is_routed_around(server):
    async with SGLangEngine([dead_url(), server.url], backoff=0.05, max_retries=4) as engine:
        results = await asyncio.gather(*(engine.generate([i], SamplingParams()) for i in range(10, 20)))
        assert [r.token_ids[0] for r in results] == [i + 1 for i in range(10, 20)]
        assert await engine.health() is True
        status = await engine.health_status()
    assert list(status.values()) == [False, True]
    assert len(server.engine.requests) >= 10


async def test_least_loaded_spreads_concurrent_requests(two_servers):
    a, b = two_servers
    async with SGLangEngine([a.url, b.url]) as engine:
        await asyncio.gather(*(engine.generate([i], SamplingParams()) for i in range(1, 21)))
    assert len(a.engine.requests) == len(b.engine.requests) == 10


async def test_round_robin_alternates(two_servers):
    a, b = two_servers
    async with SGLangEngine([a.url, b.url], policy="round_robin") as engine:
        for i in range(1, 7):
            await engine.generate([i], SamplingParams())
    assert [ids for ids, _ in a.engine.requests] == [[1], [3], [5]]
    assert [ids for ids, _ in b.engine.requests] == [[2], [4], [6]]


async def test_update_weights_reaches_every_server_and_versions_the_answers(two_servers, tmp_path):
    a, b = two_servers
    async with SGLangEngine([a.url, b.url]) as engine:
        assert await engine.update_weights(tmp_path) == 1
        assert engine.weight_version == 1
        assert a.engine.loaded == b.engine.loaded == [["w"]]
        assert {(await engine.generate([1], SamplingParams())).weight_version for _ in range(4)} == {1}
        assert await engine.update_weights(str(tmp_path), version=5) == 5
        assert (await engine.get_model_info())["weight_version"] == "5"
        with pytest.raises(EngineError, match=r"2 of 2 server\(s\) failed.*does not exist"):
            await engine.update_weights(tmp_path / "missing")
        with pytest.raises(TypeError, match="path of a Hugging Face model folder"):
            await engine.update_weights({"w": 1})
        assert engine.weight_version == 5


async def test_abort_one_request_and_all(tmp_path):
    with serve(FakeEngine(responder=next_ids, latency=0.5)) as s:
        async with SGLangEngine(s.url) as engine:
            task = asyncio.ensure_future(engine.generate([1], SamplingParams(), rid="mine"))
            other = asyncio.ensure_future(engine.generate([2], SamplingParams(), rid="other"))
            await asyncio.sleep(0.2)
            await engine.abort("mine")
            assert (await task).finish_reason == "abort"
            assert (await other).finish_reason == "stop"
            tasks = [asyncio.ensure_future(engine.generate([i], SamplingParams())) for i in (3, 4)]
            await asyncio.sleep(0.2)
            await engine.abort()
            assert [(await t).finish_reason for t in tasks] == ["abort", "abort"]


async def test_abort_of_an_unknown_request_is_harmless(server):
    async with SGLangEngine(server.url) as engine:
        await engine.abort("never-sent")
        assert (await engine.generate([1], SamplingParams())).finish_reason == "stop"


async def test_flush_cache_and_server_info(server):
    async with SGLangEngine(server.url) as engine:
        await engine.flush_cache()
        info = await engine.get_server_info()
    assert info["internal_states"][0]["engine"] == "CountingEngine"


async def test_sglang_only_weight_paths_raise_clear_errors(two_servers):
    a, b = two_servers
    async with SGLangEngine(a.url) as engine:
        with pytest.raises(EngineError, match="SGLang-only"):
            await engine.update_weights_from_tensor(["payload"])
        # agentrl serve implements SGLang's in-memory path too (tests/cluster/test_server_weight_sync.py): here
        # it refuses NCCL without a GPU, and an update before a group exists
        if not __import__("torch").cuda.is_available():
            with pytest.raises(EngineError, match="backend nccl needs the engine on a CUDA GPU"):
                await engine.init_weights_update_group("127.0.0.1", 29500, 1, 2)
        with pytest.raises(EngineError, match="call /init_weights_update_group first"):
            await engine.update_weights_from_distributed(["w"], ["bfloat16"], [[2, 2]])
        assert engine.weight_version == 0
    async with SGLangEngine([a.url, b.url]) as engine:
        with pytest.raises(ValueError, match="url="):
            await engine.update_weights_from_tensor(["payload"])


async def test_a_router_url_finds_its_workers_for_weight_updates(two_servers, tmp_path):
    a, b = two_servers
    router = FastAPI()

    @router.get("/list_workers")
    async def list_workers():
        return {"urls": [a.url, b.url]}

    with BackgroundServer(router) as r:
        async with SGLangEngine(r.url) as engine:
            await engine.update_weights(tmp_path)
    assert a.engine.loaded == b.engine.loaded == [["w"]]


async def test_explicit_worker_urls_get_the_control_calls(two_servers, tmp_path):
    a, b = two_servers
    async with SGLangEngine(a.url, worker_urls=[a.url, b.url]) as engine:
        await engine.update_weights(tmp_path)
        await engine.generate([1], SamplingParams())
    assert b.engine.loaded == [["w"]] and len(b.engine.requests) == 0


def test_the_client_survives_separate_event_loops(server):
    engine = SGLangEngine(server.url)
    for _ in range(2):
        assert asyncio.run(engine.generate([1], SamplingParams())).token_ids == [2, 3, 2]
