"""Hostile clients against the OpenAI-compatible routes of ``agentrl serve``: malformed tools and prompts
are OpenAI-shaped 400s naming the parameter, and a client that goes away (a timeout, a closed stream)
has its engine request aborted instead of holding a slot until the end. Disconnects are checked with
events, not timings."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest

from agentrl.engine.server import BackgroundServer, create_app
from agentrl.testing import FakeEngine

USER = [{"role": "user", "content": "Hi"}]


class BlockingEngine(FakeEngine):
    """Holds its first request until it is aborted (60 s at most); ``started`` / ``aborted`` tell the
    test when. Later requests are answered at once."""

    def __init__(self):
        super().__init__(responder=lambda ids, sp: [5, 6])
        self.started, self.aborted = threading.Event(), threading.Event()
        self.aborted_rids: list[str] = []

    async def generate(self, input_ids, sampling, *, rid=None):
        if not self.started.is_set():
            self.started.set()
            for _ in range(600):
                if rid in self._aborted:
                    break
                await asyncio.sleep(0.1)
        return await super().generate(input_ids, sampling, rid=rid)

    async def abort(self, rid=None):
        self.aborted_rids.append(rid)
        self.aborted.set()
        await super().abort(rid)


@pytest.fixture
def served(tokenizer):
    engine = BlockingEngine()
    with BackgroundServer(create_app(engine, tokenizer, model_path="m")) as s:
        yield engine, s


def _send_then_hang_up(server, path: str, body: dict, engine: BlockingEngine) -> None:
    """Send a request on a raw socket, wait until the engine works on it, then close the connection."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        assert engine.started.wait(30)
        if body.get("stream"):
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")  # the stream has begun
    # the socket is closed: the server must notice and abort


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "m", "messages": USER}),
    ("/v1/chat/completions", {"model": "m", "messages": USER, "stream": True}),
    ("/v1/completions", {"model": "m", "prompt": "Hi"}),
    ("/v1/completions", {"model": "m", "prompt": "Hi", "stream": True}),
    ("/generate", {"input_ids": [1, 2]}),
])
def test_a_client_that_hangs_up_has_its_engine_request_aborted(served, path, body):
    engine, s = served
    _send_then_hang_up(s, path, body, engine)
    assert engine.aborted.wait(30), "the engine kept generating for a client that had gone"  # before: never
    assert engine.aborted_rids and all(r is not None for r in engine.aborted_rids)  # that request only, not all
    r = httpx.post(s.url + "/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 1}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1  # the next client is served


@pytest.fixture
def plain(tokenizer):
    with BackgroundServer(create_app(FakeEngine(responder=lambda ids, sp: [5, 6]), tokenizer, model_path="m")) as s:
        yield s


def fn(name="f", **extra):
    return {"type": "function", "function": {"name": name, **extra}}


@pytest.mark.parametrize("tools, param", [
    ([fn(parameters="not a schema")], "tools[0].function.parameters"),
    ([fn(parameters={"type": "object", "properties": 5})], "tools[0].function.parameters"),
    ([fn(parameters=[1, 2])], "tools[0].function.parameters"),
    ([fn(description=7)], "tools[0].function.description"),
    ([fn("")], "tools[0].function.name"),
    ([fn("a b")], "tools[0].function.name"),
    ([fn('say"hi')], "tools[0].function.name"),  # the parser could never read it back from a call
    ([fn("x" * 201)], "tools[0].function.name"),
    ([fn("f"), fn("g"), fn("f")], "tools[2].function.name"),
])
def test_tools_with_bad_schemas_are_400_naming_the_parameter(plain, tools, param):
    r = httpx.post(plain.url + "/v1/chat/completions", json={"model": "m", "messages": USER, "tools": tools})
    assert r.status_code == 400, r.text  # before: 200, the broken schema rendered into the prompt
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    good = [fn("get_weather", description="d", parameters={"type": "object", "properties": {"city": {"type": "string"}}}),
            fn("mcp.files:read")]
    ok = httpx.post(plain.url + "/v1/chat/completions", json={"model": "m", "messages": USER, "tools": good})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("raw, param", [
    (b'{"model": "m", "prompt": ""}', "prompt"),  # before: 500 from the engine (empty input_ids)
    (b'{"model": "m", "prompt": "\\ud800"}', None),  # before: 500 (tokenizer TypeError)
    (b'{"model": "\\udc00", "messages": [{"role": "user", "content": "Hi"}]}', None),
])
def test_prompts_that_are_no_text_are_400(plain, raw, param):
    path = "/v1/completions" if b'"prompt"' in raw else "/v1/chat/completions"
    for stream in (b"", b', "stream": true'):
        r = httpx.post(plain.url + path, content=raw[:-1] + stream + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
    assert httpx.get(plain.url + "/v1/models").status_code == 200


def test_episodes_opened_over_http_are_bounded(plain, monkeypatch):
    from agentrl.openai import routes
    from agentrl.openai.service import EpisodeDirectory

    monkeypatch.setattr(routes, "MAX_OPEN_EPISODES", 2)
    keys = [httpx.post(plain.url + "/v1/episodes").json()["key"] for _ in range(2)]
    r = httpx.post(plain.url + "/v1/episodes")
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_episodes"  # before: without end
    assert httpx.post(plain.url + f"/v1/episodes/{keys[0]}/finish").status_code == 200
    assert httpx.post(plain.url + "/v1/episodes").status_code == 200  # a finished one makes room
    late = httpx.post(plain.url + f"/episodes/{keys[0]}/v1/chat/completions", json={"model": "m", "messages": USER})
    assert late.status_code == 409
    # finished keys are remembered up to a bound, as in the rollout's directory (their memory stays bounded)
    monkeypatch.setattr(EpisodeDirectory, "REMEMBERED", 1)
    assert httpx.post(plain.url + f"/v1/episodes/{keys[1]}/finish").status_code == 200
    gone = httpx.post(plain.url + f"/episodes/{keys[0]}/v1/chat/completions", json={"model": "m", "messages": USER})
    assert gone.status_code == 404
