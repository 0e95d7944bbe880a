"""`agentrl serve` over the real embedded engine (tiny-qwen2): plain HTTP and the SGLang client."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import httpx
import pytest

from agentrl.engine.base import SamplingParams
from agentrl.engine.server import BackgroundServer, create_app
from agentrl.engine.sglang import SGLangEngine, launch_sglang
from agentrl.models import resolve_model_path

GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}


@pytest.fixture(scope="module")
def embedded():
    from agentrl.engine.embedded import EmbeddedEngine

    path = resolve_model_path("tiny-qwen2")
    engine = EmbeddedEngine(path, max_batch_size=4, max_seq_len=128)
    with BackgroundServer(create_app(engine, engine.tokenizer, model_path=path)) as server:
        yield engine, server
    asyncio.run(engine.close())


def test_plain_http_answers_have_sglangs_shape_and_match_the_engine(embedded):
    engine, server = embedded
    tok = engine.tokenizer
    out = httpx.post(server.url + "/generate", timeout=60,
                     json={"text": "The capital of France is", "sampling_params": GREEDY, "return_logprob": True}).json()
    prompt = tok.encode("The capital of France is")
    direct = asyncio.run(engine.generate(prompt, SamplingParams.from_sglang(GREEDY)))
    assert out["output_ids"] == direct.token_ids and len(out["output_ids"]) == 6
    assert out["text"] == tok.decode(direct.token_ids, skip_special_tokens=True)
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 6}
    assert meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == 6
    assert [e[1] for e in meta["output_token_logprobs"]] == direct.token_ids
    assert [e[0] for e in meta["output_token_logprobs"]] == pytest.approx(direct.logprobs, abs=1e-4)
    assert all(e[0] <= 0 for e in meta["output_token_logprobs"])


def test_batch_stream_and_stop_token_with_the_embedded_engine(embedded):
    engine, server = embedded
    outs = httpx.post(server.url + "/generate", timeout=60,
                      json={"input_ids": [[1, 2, 3], [4, 5]], "sampling_params": GREEDY}).json()
    assert [len(o["output_ids"]) for o in outs] == [6, 6]
    first = outs[0]["output_ids"]
    stop_at = first[2]
    stopped = httpx.post(server.url + "/generate", timeout=60, json={
        "input_ids": [1, 2, 3], "sampling_params": {**GREEDY, "stop_token_ids": [stop_at]}}).json()
    assert stopped["output_ids"] == first[: first.index(stop_at) + 1]
    assert stopped["meta_info"]["finish_reason"]["type"] == "stop"
    r = httpx.post(server.url + "/generate", timeout=60,
                   json={"input_ids": [1, 2, 3], "sampling_params": GREEDY, "stream": True})
    chunks = [c[len("data: "):] for c in r.text.split("\n\n") if c.strip()]
    assert chunks[-1] == "[DONE]" and json.loads(chunks[-2])["output_ids"] == first


def test_out_of_vocabulary_and_too_long_prompts_are_400(embedded):
    engine, server = embedded
    r = httpx.post(server.url + "/generate", json={"input_ids": [engine.vocab_size]})
    assert r.status_code == 400 and "out of range" in r.json()["message"]
    r = httpx.post(server.url + "/generate", json={"input_ids": [1] * 200})
    assert r.status_code == 400 and "max_seq_len" in r.json()["message"]
    assert httpx.get(server.url + "/health_generate", timeout=60).status_code == 200


async def test_sglang_client_and_weight_update_from_disk(embedded, tmp_path):
    from agentrl.testing import make_tiny_model

    engine, server = embedded
    other = make_tiny_model(tmp_path / "other", "qwen2", seed=1)
    greedy = SamplingParams.from_sglang(GREEDY)
    async with SGLangEngine(server.url) as client:
        before = await client.generate([1, 2, 3], greedy)
        assert before.token_ids == (await engine.generate([1, 2, 3], greedy)).token_ids
        version = await client.update_weights(other)
        after = await client.generate([1, 2, 3], greedy)
        assert after.weight_version == version == engine.weight_version
        assert after.token_ids != before.token_ids  # other weights, other greedy answer
        await client.update_weights(resolve_model_path("tiny-qwen2"))
        assert (await client.generate([1, 2, 3], greedy)).token_ids == before.token_ids


async def test_sglang_priority_reaches_the_embedded_engine_through_serve():
    """SGLang's ``priority`` (higher first) from the client's request_priority (lower first) to the
    engine's admission order, with one slot busy."""
    from agentrl.engine import request_priority
    from agentrl.engine.embedded import EmbeddedEngine

    path = resolve_model_path("tiny-qwen2")
    engine = EmbeddedEngine(path, max_batch_size=1, max_seq_len=256)
    order: list[str] = []
    with BackgroundServer(create_app(engine, engine.tokenizer, model_path=path)) as server:
        async with SGLangEngine(server.url) as client:
            async def one(name: str, priority: int, n: int):
                with request_priority(priority):
                    await client.generate([1, 2, 3], SamplingParams(max_new_tokens=n, ignore_eos=True))
                order.append(name)

            first = asyncio.ensure_future(one("running", 0, 240))
            while engine.stats.generated_tokens < 2:
                await asyncio.sleep(0.01)
            queued = []
            for name, priority in [("p5", 5), ("p1", 1), ("p3", 3)]:
                queued.append(asyncio.ensure_future(one(name, priority, 2)))
                while len(engine._scheduler._waiting) < len(queued):  # arrived, in this order
                    await asyncio.sleep(0.005)
            await asyncio.gather(first, *queued)
    await engine.close()
    assert order == ["running", "p1", "p3", "p5"]


@pytest.mark.slow
def test_agentrl_serve_cli_with_the_embedded_engine_in_a_subprocess(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "agentrl.engine.server", "--model-path", "tiny-qwen2", "--port", str(port),
               "--max-batch-size", "4", "--max-seq-len", "128", "--log-level", "warning"]
    with launch_sglang("tiny-qwen2", base_port=port, server_command=lambda i, p: command, log_dir=tmp_path,
                       health_timeout=300) as cluster:
        out = httpx.post(cluster.url + "/generate", timeout=60,
                         json={"text": "Hello", "sampling_params": GREEDY, "return_logprob": True}).json()
        info = httpx.get(cluster.url + "/get_model_info").json()
        models = [m["id"] for m in httpx.get(cluster.url + "/v1/models").json()["data"]]
        chat = httpx.post(cluster.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny-qwen2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert len(out["output_ids"]) == 6 and out["meta_info"]["finish_reason"]["type"] == "length"
    assert info["architectures"] == ["Qwen2ForCausalLM"] and info["weight_version"] == "0"
    # the model is served under the name it was given (an alias here), and under the folder it resolved to
    assert info["served_model_name"] == "tiny-qwen2" and models == ["tiny-qwen2", resolve_model_path("tiny-qwen2")]
    assert chat.status_code == 200, chat.text


def test_serve_builds_the_engine_from_its_flags():
    from agentrl.engine._server_run import TABLE, _build_engine

    args, _, problems = TABLE.parse(["--model-path", "tiny-qwen2", "--engine-device", "cpu", "--engine-max-batch-size",
                                     "3", "--max-seq-len", "96", "--admit-wait-steps", "5"])  # old spellings too
    assert problems == [] and args.problems() == []
    engine, tokenizer, path = _build_engine(args)
    try:
        assert (engine.config.max_batch_size, engine.config.max_seq_len, engine.config.admit_wait_steps) == (3, 96, 5)
        assert tokenizer is engine.tokenizer and path == resolve_model_path("tiny-qwen2")
    finally:
        asyncio.run(engine.close())
