"""Hostile clients against ``agentrl serve``: oversized bodies and prompts are refused before they
are read or tokenized, deep JSON is a 400, sampling values float32 cannot hold are refused (or
mean greedy, as in SGLang), weight files that hang stay off the engine, and other clients are
served throughout. Concurrency is checked with events, not with timings."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from types import SimpleNamespace

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrl.engine import _server_weights as server_weights
from agentrl.engine._server_protocol import RequestError, parse_generate_request
from agentrl.engine.server import BackgroundServer, create_app
from agentrl.testing import FakeEngine


def echo(ids, sampling):
    return [ids[-1] + 1, 2]


class CountingTokenizer:
    """The real tokenizer, counting the characters it is asked to encode; ``gate`` (when set)
    holds every encode of a prompt longer than ``hold_over`` characters until it is opened."""

    def __init__(self, inner, gate: threading.Event | None = None, hold_over: int = 10_000):
        self.inner, self.gate, self.hold_over = inner, gate, hold_over
        self.encoded_chars = 0
        self.holding = threading.Event()

    def encode(self, text, **kwargs):
        self.encoded_chars += len(text)
        if self.gate is not None and len(text) > self.hold_over:
            self.holding.set()
            assert self.gate.wait(60)
        return self.inner.encode(text, **kwargs)

    def decode(self, ids, **kwargs):
        return self.inner.decode(ids, **kwargs)

    def get_vocab(self):
        return self.inner.get_vocab()

    def __len__(self):
        return len(self.inner)


def fake_engine(context: int = 4096) -> FakeEngine:
    """A FakeEngine with a context length where the server looks for one (the embedded engine's)."""
    engine = FakeEngine(responder=echo)
    engine.config = SimpleNamespace(max_seq_len=context)
    return engine


def test_an_8_mb_prompt_is_refused_before_it_is_tokenized(tokenizer):
    counting = CountingTokenizer(tokenizer)
    with BackgroundServer(create_app(fake_engine(), counting, model_path="m")) as s:
        r = httpx.post(s.url + "/generate", json={"text": "a" * (8 << 20)}, timeout=60)
        assert r.status_code == 400 and "more tokens than the server's context can hold" in r.json()["message"]
        assert counting.encoded_chars == 0  # before: 15 s of tokenizing on the event loop, then the 400
        ok = httpx.post(s.url + "/generate", json={"text": "hello"}, timeout=60)
        assert ok.status_code == 200 and counting.encoded_chars == 5


def test_a_body_over_the_limit_gets_413_without_being_read(tokenizer):
    app = create_app(FakeEngine(responder=echo), tokenizer, model_path="m", max_request_bytes=1 << 20)
    with BackgroundServer(app) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as conn:
            # a Content-Length of 1 GB and no body at all: a server that read first would wait for ever
            conn.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000\r\n\r\n")
            head = conn.recv(4096).decode()
        assert head.startswith("HTTP/1.1 413")

        def chunks():  # chunked transfer: no Content-Length, refused once 1 MiB has come in
            for _ in range(64):
                yield b" " * 65536

        r = httpx.post(s.url + "/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1,048,576 bytes" in r.json()["message"]
        assert httpx.get(s.url + "/health").status_code == 200


def test_tokenizing_runs_off_the_event_loop_and_health_answers_meanwhile(tokenizer):
    gate = threading.Event()
    counting = CountingTokenizer(tokenizer, gate=gate)
    with BackgroundServer(create_app(fake_engine(), counting, model_path="m")) as s:
        results: list = []
        t = threading.Thread(target=lambda: results.append(
            httpx.post(s.url + "/generate", json={"text": "word " * 20_000}, timeout=60)))
        t.start()
        try:
            assert counting.holding.wait(30)  # the big prompt is being tokenized right now...
            assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # ...and other clients are served
            assert httpx.post(s.url + "/generate", json={"input_ids": [5]}, timeout=10).json()["output_ids"] == [6, 2]
        finally:
            gate.set()
            t.join(60)
    assert results[0].status_code == 200


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"input_ids": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}",
                                  b'{"text": "\xff\xfe"}', b'{"input_ids": [1], "rid": ' + b"9" * 5000 + b"}"])
def test_deep_or_undecodable_json_is_a_400(tokenizer, body):
    with BackgroundServer(create_app(FakeEngine(responder=echo), tokenizer, model_path="m")) as s:
        r = httpx.post(s.url + "/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text  # before: 500 (RecursionError)
        assert httpx.post(s.url + "/generate", json={"input_ids": [1]}).status_code == 200


@pytest.mark.parametrize("params, clue", [
    ({"temperature": 1e39}, "at most 3.403e+38"),
    ({"top_p": 1e-50}, "'top_p' must be at least"),
    ({"top_k": 2**70}, "64 bits"),
    ({"n": [1]}, "'n' must be an integer"),
])
def test_sampling_values_float32_cannot_hold_are_refused(tokenizer, params, clue):
    with BackgroundServer(create_app(FakeEngine(responder=echo), tokenizer, model_path="m")) as s:
        r = httpx.post(s.url + "/generate", json={"input_ids": [1], "sampling_params": params})
        assert r.status_code == 400 and clue in r.json()["message"]


@pytest.fixture(scope="module")
def embedded():
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.models import resolve_model_path

    engine = EmbeddedEngine(resolve_model_path("tiny-qwen2"), max_batch_size=2, max_seq_len=64)
    with BackgroundServer(create_app(engine, engine.tokenizer, model_path="tiny-qwen2")) as s:
        yield engine, s
    asyncio.run(engine.close())


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-7])
def test_a_temperature_below_float32s_range_is_greedy_as_in_sglang(embedded, temperature):
    engine, s = embedded
    greedy = {"max_new_tokens": 4, "ignore_eos": True, "temperature": 0}
    body = {"input_ids": [1, 2, 3], "return_logprob": True}
    expected = httpx.post(s.url + "/generate", json={**body, "sampling_params": greedy}, timeout=60).json()
    out = httpx.post(s.url + "/generate", json={**body, "sampling_params": {**greedy, "temperature": temperature}},
                     timeout=60).json()
    # before: token 49151 (the last id) with null (NaN) logprobs for any temperature below ~1e-38
    assert out["output_ids"] == expected["output_ids"]
    assert all(lp is not None for lp, _, _ in out["meta_info"]["output_token_logprobs"])


def test_a_weight_file_that_blocks_on_open_costs_only_its_request(embedded, tmp_path):
    engine, s = embedded
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)  # opening it for reading waits for a writer that never comes
    try:
        r = httpx.post(s.url + "/update_weights_from_disk", json={"model_path": str(tmp_path)}, timeout=30)
        assert r.status_code == 400 and "not a regular file" in r.json()["message"]
        out = httpx.post(s.url + "/generate", json={"input_ids": [1], "sampling_params": {"max_new_tokens": 2}},
                         timeout=30)  # before: the engine's worker sat in open() and every request waited
        assert out.status_code == 200 and engine.weight_version == 0
    finally:
        try:  # release a reader stuck in open(), if any
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_weight_read_that_hangs_times_out_and_other_requests_go_on(tokenizer, tmp_path, monkeypatch):
    gate, started = threading.Event(), threading.Event()

    def hanging_read(path):
        started.set()
        gate.wait(60)
        return {}

    monkeypatch.setattr(server_weights, "read_weight_files", hanging_read)
    engine = FakeEngine(responder=echo)
    app = create_app(engine, tokenizer, model_path="m", weight_load_timeout=1.0)
    with BackgroundServer(app) as s:
        results: list = []
        t = threading.Thread(target=lambda: results.append(httpx.post(
            s.url + "/update_weights_from_disk", json={"model_path": str(tmp_path)}, timeout=60)))
        t.start()
        assert started.wait(30)
        assert httpx.post(s.url + "/generate", json={"input_ids": [1]}, timeout=10).status_code == 200
        t.join(60)
        assert results[0].status_code == 400 and "took longer than 1 s" in results[0].json()["message"]
        again = httpx.post(s.url + "/update_weights_from_disk", json={"model_path": str(tmp_path)})
        assert again.status_code == 400 and "still reading" in again.json()["message"]
        assert engine.weight_version == 0  # the engine never waited on the file system
        gate.set()


BODIES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_subnormal=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["text", "input_ids", "sampling_params", "rid", "n", "temperature", "top_p", "top_k",
                         "stop", "stream", "return_logprob", "priority", "max_new_tokens", "logprob_start_len"]),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_any_body_is_parsed_or_refused_with_a_request_error(body):
    try:
        parse_generate_request(body, vocab_size=100, max_prompt_chars=1000)
    except RequestError:
        pass  # a 400 with its message; any other exception would be a 500


def test_parse_errors_name_the_field_and_stay_short():
    with pytest.raises(RequestError, match="unknown field") as info:
        parse_generate_request({"x" * 100_000: 1, "input_ids": [1]})
    assert len(str(info.value)) < 1000
    rids = [f"r{i}" for i in range(50_000)] + ["r0"]
    with pytest.raises(RequestError, match="duplicate request ids: \\['r0'\\]"):
        parse_generate_request({"input_ids": [[1]] * len(rids), "rid": rids})
    with pytest.raises(RequestError, match="more than the 65,536 completions"):
        parse_generate_request({"input_ids": [1], "sampling_params": {"n": 10**9}})
    json.dumps(parse_generate_request({"input_ids": [1], "sampling_params": {"temperature": 1e-300}}).items[0].sampling
               .to_sglang())
