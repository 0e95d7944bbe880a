"""The official ``openai`` SDK against ``agentrl serve``'s OpenAI routes: sync and async clients, streaming
and not, with and without tools; errors in OpenAI's shape, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from agentrl.engine.base import SamplingParams
from agentrl.engine.server import BackgroundServer, create_app
from agentrl.models import resolve_model_path
from agentrl.testing import FakeEngine

HI = [{"role": "user", "content": "Say hi."}]
ASK = [{"role": "user", "content": "Please add 2 and 3."}]
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
CALL = 'Adding. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>'


@pytest.fixture(scope="module")
def embedded():
    from agentrl.engine.embedded import EmbeddedEngine

    path = resolve_model_path("tiny-qwen2")
    engine = EmbeddedEngine(path, max_batch_size=4, max_seq_len=256)
    with BackgroundServer(create_app(engine, engine.tokenizer, model_path=path)) as server:
        yield engine, server, path
    asyncio.run(engine.close())


@pytest.fixture(scope="module")
def tool_server(tokenizer):
    """A scripted engine that answers ASK with one hermes tool call, anything else with plain text."""
    call = tokenizer.encode(CALL, add_special_tokens=False)
    text = tokenizer.encode("The answer is 5.<|im_end|>", add_special_tokens=False)
    tools_prompt = tokenizer.encode("Please add", add_special_tokens=False)

    def responder(ids, sampling):
        return call if _contains(ids, tools_prompt) else text

    with BackgroundServer(create_app(FakeEngine(responder=responder), tokenizer, model_path="m")) as server:
        yield server


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


def test_sync_chat_matches_the_engine_and_streams_the_same_text(embedded, template):
    engine, server, path = embedded
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    assert path in [m.id for m in client.models.list().data]
    out = client.chat.completions.create(model=path, messages=HI, max_tokens=6, temperature=0, logprobs=True)
    prompt = template.encode(HI, add_generation_prompt=True)
    direct = asyncio.run(engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=6,
                                                                stop_token_ids=template.stop_token_ids)))
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert choice.finish_reason == ("length" if direct.finish_reason == "length" else "stop")
    assert out.usage.prompt_tokens == len(prompt) and out.usage.completion_tokens == len(direct.token_ids)
    assert [lp.logprob for lp in choice.logprobs.content] == pytest.approx(direct.logprobs, abs=1e-4)
    streamed = client.chat.completions.create(model=path, messages=HI, max_tokens=6, temperature=0, stream=True,
                                              stream_options={"include_usage": True})
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens


def test_async_client_and_text_completions(embedded):
    engine, server, path = embedded

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none")
        plain = await client.chat.completions.create(model=path, messages=HI, max_completion_tokens=4, temperature=0)
        stream = await client.chat.completions.create(model=path, messages=HI, max_tokens=4, temperature=0,
                                                      stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        done = await client.completions.create(model=path, prompt="The capital of France is", max_tokens=4,
                                               temperature=0, logprobs=1)
        return plain, text, done

    plain, text, done = asyncio.run(main())
    assert plain.choices[0].message.content == text
    assert done.object == "text_completion" and done.usage.completion_tokens == 4
    assert len(done.choices[0].logprobs.token_logprobs) == 4 and done.choices[0].finish_reason == "length"


def test_tool_calls_come_back_as_tool_calls_sync_and_streamed(tool_server):
    client = openai.OpenAI(base_url=tool_server.url + "/v1", api_key="none")
    out = client.chat.completions.create(model="m", messages=ASK, tools=[ADD])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Adding."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 2, "b": 3}
    chunks = list(client.chat.completions.create(model="m", messages=ASK, tools=[ADD], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed_calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed_calls] == [("add", {"a": 2, "b": 3})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    plain = client.chat.completions.create(model="m", messages=HI)
    assert plain.choices[0].message.content == "The answer is 5." and plain.choices[0].finish_reason == "stop"


def test_async_tool_calls_and_tool_choice_none(tool_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=tool_server.url + "/v1", api_key="none")
        out = await client.chat.completions.create(model="m", messages=ASK, tools=[ADD])
        stream = await client.chat.completions.create(model="m", messages=ASK, tools=[ADD], stream=True)
        calls = [tc async for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        none = await client.chat.completions.create(model="m", messages=ASK, tools=[ADD], tool_choice="none")
        return out, calls, none

    out, calls, none = asyncio.run(main())
    assert out.choices[0].message.tool_calls[0].function.name == "add" and calls[0].function.name == "add"
    assert none.choices[0].message.tool_calls is None and "<tool_call>" in none.choices[0].message.content


def test_errors_are_openai_shaped_4xx_and_the_server_keeps_serving(tool_server):
    url = tool_server.url
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    cases = [
        (openai.NotFoundError, dict(model="gpt-4o", messages=HI), "model"),
        (openai.BadRequestError, dict(model="m", messages=HI, n=2), "n"),
        (openai.BadRequestError, dict(model="m", messages=HI, top_logprobs=3, logprobs=True), "top_logprobs"),
        (openai.BadRequestError, dict(model="m", messages=ASK, tools=[ADD], tool_choice="required"), "tool_choice"),
        (openai.BadRequestError, dict(model="m", messages=HI, response_format={"type": "json_object"}),
         "response_format"),
        (openai.BadRequestError, dict(model="m", messages=[{"role": "wizard", "content": "x"}]), "messages[0]"),
        (openai.BadRequestError, dict(model="m", messages=HI, extra_body={"best_of": 3}), "best_of"),
        (openai.BadRequestError, dict(model="m", messages=HI, temperature=7), "temperature"),
    ]
    for error, kwargs, param in cases:
        with pytest.raises(error) as info:
            client.chat.completions.create(**kwargs)
        body = info.value.body
        assert isinstance(body, dict) and body["param"] == param and body["message"], (kwargs, body)
    for raw in (b"{not json", b"", b"[1, 2]", b"[" * 100 + b"]" * 100):
        r = httpx.post(url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, raw
    r = httpx.post(url + "/v1/completions", json={"model": "m", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert httpx.get(url + "/v1/nothing").json()["error"]["message"]
    # episode keys: unknown, then finished
    assert httpx.post(url + "/episodes/not-a-key/v1/chat/completions",
                      json={"model": "m", "messages": HI}).status_code == 404
    key = httpx.post(url + "/v1/episodes").json()["key"]
    episode = openai.OpenAI(base_url=f"{url}/episodes/{key}/v1", api_key="none", max_retries=0)
    assert episode.chat.completions.create(model="m", messages=HI).choices[0].finish_reason == "stop"
    record = httpx.post(f"{url}/v1/episodes/{key}/finish").json()
    assert len(record["segments"]) == 1 and sum(record["segments"][0]["loss_mask"]) > 0
    with pytest.raises(openai.ConflictError):
        episode.chat.completions.create(model="m", messages=HI)
    with pytest.raises(openai.ConflictError):  # the finished key as an API key
        openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0).chat.completions.create(model="m", messages=HI)
    assert client.chat.completions.create(model="m", messages=HI).choices[0].message.content == "The answer is 5."
