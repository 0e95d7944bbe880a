"""The official ``openai`` SDK against the endpoint a rollout starts in front of its engine: the sync
client and streaming record the same tokens as the async non-streaming client; malformed bodies,
unsupported fields, unknown and finished episode keys are OpenAI-shaped 4xx and the endpoint keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from agentrl.env.agent import AgentEnv
from agentrl.openai.endpoint import AgentEndpoint
from agentrl.openai.service import ChatService
from agentrl.rollout.config import RolloutConfig
from agentrl.rollout.episode import EpisodeRequest, run_episode
from agentrl.testing import FakeEngine
from test_capture import SCHEMAS, SYSTEM, TOOLS, USER, ToolEnv, _engine, _token_fields


def _run_tool(name: str, arguments: str) -> str:
    return str(TOOLS[name](**json.loads(arguments)))


async def streaming_agent(client, task):
    """The ReAct loop with ``stream=True``: content and tool calls put together from the deltas."""
    messages = [dict(SYSTEM), dict(USER)]
    while True:
        stream = await client.chat.completions.create(model="policy", messages=messages, tools=SCHEMAS, stream=True)
        content, calls = "", {}
        async for chunk in stream:
            delta = chunk.choices[0].delta if chunk.choices else None
            content += (delta.content or "") if delta else ""
            for tc in (delta.tool_calls or []) if delta else []:
                calls.setdefault(tc.index, {"id": tc.id, "type": "function", "function": {"name": "", "arguments": ""}})
                calls[tc.index]["function"]["name"] += tc.function.name or ""
                calls[tc.index]["function"]["arguments"] += tc.function.arguments or ""
        message = {"role": "assistant", "content": content or None, "tool_calls": list(calls.values()) or None}
        messages.append({k: v for k, v in message.items() if v is not None})
        if not calls:
            return float("20" in content)
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": _run_tool(c["function"]["name"],
                                                                                  c["function"]["arguments"])}
                     for c in calls.values()]


async def sync_client_agent(client, task):
    """A synchronous program (the sync SDK) run in a thread, pointed at the episode's base URL and key."""

    def program() -> float:
        sync = openai.OpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0)
        messages = [dict(SYSTEM), dict(USER)]
        while True:
            message = sync.chat.completions.create(model="policy", messages=messages, tools=SCHEMAS).choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            if not message.tool_calls:
                return float("20" in (message.content or ""))
            messages += [{"role": "tool", "tool_call_id": tc.id, "content": _run_tool(tc.function.name,
                                                                                    tc.function.arguments)}
                         for tc in message.tool_calls]

    return await asyncio.to_thread(program)


@pytest.mark.parametrize("agent, in_process", [(streaming_agent, True), (streaming_agent, False),
                                               (sync_client_agent, True)])
def test_streaming_and_the_sync_client_record_the_textenv_tokens(tokenizer, template, agent, in_process):
    """In process (httpx's ASGI transport) and over TCP alike; the sync program always goes over TCP."""
    config = RolloutConfig()
    expected = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="tools"), config,
                                       env=ToolEnv()))
    got = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"), config,
                                  env=AgentEnv(agent, tasks=[{}], in_process=in_process)))
    assert got.status == "ok" and got.reward == 1.0 and got.num_turns == 3, got.error
    assert _token_fields(got) == _token_fields(expected)
    assert got.metrics["tool_calls"] == 2 and got.metrics["segments"] == 1


def test_the_endpoint_answers_bad_requests_with_openai_errors_and_keeps_serving(tokenizer, template):
    ids = tokenizer.encode("Fine.<|im_end|>", add_special_tokens=False)
    service = ChatService(FakeEngine(responder=lambda prompt, sampling: ids), template, model_names=["policy"],
                          require_episode=True)
    hi = {"model": "policy", "messages": [{"role": "user", "content": "Hi"}]}

    async def main():
        async with AgentEndpoint(service) as endpoint:
            assert endpoint.host == "127.0.0.1"
            key, done = service.open_episode(), service.open_episode()
            service.finish_episode(done)
            url = endpoint.base_url(key)
            seen = []
            async with httpx.AsyncClient() as http:
                for path, kwargs in [
                    (url + "/chat/completions", {"content": b"{not json"}),
                    (url + "/chat/completions", {"content": b"[" * 200 + b"]" * 200}),
                    (url + "/chat/completions", {"json": {**hi, "n": 2}}),
                    (url + "/chat/completions", {"json": {**hi, "frequency_penalty": 1.0}}),
                    (url + "/chat/completions", {"json": {**hi, "model": "gpt-4o"}}),
                    (url + "/chat/completions", {"json": {"model": "policy"}}),
                    (endpoint.base_url("a" * 32) + "/chat/completions", {"json": hi}),
                    (endpoint.base_url(done) + "/chat/completions", {"json": hi}),
                    (endpoint.url + "/v1/chat/completions", {"json": hi}),
                ]:
                    r = await http.post(path, headers={"content-type": "application/json"}, **kwargs)
                    error = r.json()["error"]
                    assert set(error) == {"message", "type", "param", "code"} and error["message"]
                    seen.append((r.status_code, error["param"] or error["code"]))
            async with endpoint.client(key) as client:
                out = await client.chat.completions.create(**hi)
                models = [m.id async for m in client.models.list()]
            for in_process in (True, False):
                async with endpoint.client(done, in_process=in_process) as client:
                    with pytest.raises(openai.ConflictError):
                        await client.chat.completions.create(**hi)
            async with endpoint.client(key, in_process=False) as client:
                assert (await client.chat.completions.create(**hi)).choices[0].message.content == "Fine."
            return seen, out.choices[0].message.content, models

    seen, content, models = asyncio.run(main())
    assert seen == [(400, None), (400, None), (400, "n"), (400, "frequency_penalty"), (404, "model"),
                    (400, "messages"), (404, "episode_not_found"), (409, "episode_finished"),
                    (401, "invalid_api_key")]
    assert content == "Fine." and models == ["policy"]
