"""Token capture: a multi-turn tool conversation driven through the openai SDK gives the sample a TextEnv
episode of the same conversation gives (ids, mask, logprobs); a rewritten history starts a new segment."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai

from agentrl.engine.server import BackgroundServer, create_app
from agentrl.env import TextEnv
from agentrl.env.agent import AgentEnv
from agentrl.rollout.episode import EpisodeRequest, run_episode
from agentrl.rollout.config import RolloutConfig
from agentrl.testing import FakeEngine
from agentrl.tool import HermesParser, function_schema

SYSTEM = {"role": "system", "content": "You can call add and mul."}
USER = {"role": "user", "content": "What is (2 + 3) * 4?"}
REPLIES = [
    'Let me add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>',
    '<tool_call>{"name": "mul", "arguments": {"a": 5, "b": 4}}</tool_call><|im_end|>',
    "The answer is 20.<|im_end|>",
]


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def mul(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a * b


TOOLS = {"add": add, "mul": mul}
SCHEMAS = [function_schema(add), function_schema(mul)]


class ToolEnv(TextEnv):
    """The same conversation as a TextEnv: tool results as tool messages, done when no call comes."""

    tools = (add, mul)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return [dict(SYSTEM), dict(USER)], {}

    def step(self, action):
        calls = HermesParser().parse(action)
        if not calls:
            return [], float("20" in action), True, False, {}
        return [{"role": "tool", "content": str(TOOLS[c.name](**c.arguments))} for c in calls], 0.0, False, False, {}


def _engine(tokenizer) -> FakeEngine:
    return FakeEngine(script=[tokenizer.encode(r, add_special_tokens=False) for r in REPLIES])


def _tool_messages(message) -> list[dict]:
    return [{"role": "tool", "tool_call_id": tc.id, "content": str(TOOLS[tc.function.name](**json.loads(tc.function.arguments)))}
            for tc in message.tool_calls or []]


async def tool_agent(client, task):
    """The scripted ReAct loop, written with the plain async SDK."""
    messages = [dict(SYSTEM), dict(USER)]
    while True:
        out = await client.chat.completions.create(model="policy", messages=messages, tools=SCHEMAS)
        message = out.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return float("20" in (message.content or ""))
        messages += _tool_messages(message)


def _token_fields(sample) -> tuple:
    return sample.prompt_ids, sample.response_ids, sample.loss_mask, sample.rollout_logprobs


def test_agent_episode_equals_the_textenv_episode(tokenizer, template):
    config = RolloutConfig()
    expected = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="tools"), config,
                                       env=ToolEnv()))
    got = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"), config,
                                  env=AgentEnv(tool_agent, tasks=[{}])))
    assert expected.status == got.status == "ok" and expected.reward == got.reward == 1.0
    assert expected.num_turns == 3 and sum(expected.loss_mask) > 0
    assert _token_fields(got) == _token_fields(expected)
    assert got.metrics["segments"] == 1 and got.metrics["tool_calls"] == 2 and got.num_turns == 3
    assert got.metadata["env_info"]["earlier_segments"] == []


def test_sync_sdk_against_agentrl_serve_records_the_same_tokens(tokenizer, template):
    expected = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="tools"), RolloutConfig(),
                                       env=ToolEnv()))
    with BackgroundServer(create_app(_engine(tokenizer), tokenizer, model_path="policy")) as server:
        key = httpx.post(server.url + "/v1/episodes").json()["key"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)  # the key as the API key
        messages = [dict(SYSTEM), dict(USER)]
        for _ in REPLIES:
            message = client.chat.completions.create(model="policy", messages=messages, tools=SCHEMAS).choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            messages += _tool_messages(message)
        record = httpx.post(f"{server.url}/v1/episodes/{key}/finish").json()
    (segment,) = record["segments"]
    assert (segment["prompt_ids"], segment["response_ids"], segment["loss_mask"],
            segment["rollout_logprobs"]) == _token_fields(expected)
    calls = record["calls"]
    assert [c["segment"] for c in calls] == [0, 0, 0] and [c["finish_reason"] for c in calls] == [
        "tool_calls", "tool_calls", "stop"]
    assert calls[0]["new_prompt_ids"] == expected.prompt_ids
    assert [c["completion_ids"] for c in calls] == [tokenizer.encode(r, add_special_tokens=False) for r in REPLIES]


async def summarising_agent(client, task):
    """Two tool turns, then the history is rewritten: a new system prompt and a summary instead of the calls."""
    messages = [dict(SYSTEM), dict(USER)]
    for _ in range(2):
        message = (await client.chat.completions.create(model="policy", messages=messages, tools=SCHEMAS)).choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        messages += _tool_messages(message)
    rewritten = [{"role": "system", "content": "Answer briefly."}, dict(USER), messages[2], messages[3]]
    out = await client.chat.completions.create(model="policy", messages=rewritten, tools=SCHEMAS)
    return float("20" in (out.choices[0].message.content or ""))


def test_a_history_rewrite_yields_two_segments(tokenizer, template):
    env = AgentEnv(summarising_agent, tasks=[{}])
    sample = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"), RolloutConfig(),
                                     env=env))
    assert sample.status == "ok" and sample.reward == 1.0 and sample.metrics["segments"] == 2
    (first,) = sample.metadata["env_info"]["earlier_segments"]
    assert sum(first["loss_mask"]) == sum(len(tokenizer.encode(r, add_special_tokens=False)) for r in REPLIES[:2])
    # the new segment is the rewritten conversation rendered whole; the assistant message the endpoint produced
    # is rendered as the text the model generated (its tool call in the model's own format)
    rewritten = [{"role": "system", "content": "Answer briefly."}, dict(USER),
                 {"role": "assistant", "content": REPLIES[0].removesuffix("<|im_end|>")},
                 {"role": "tool", "content": "5"}]
    assert sample.prompt_ids == template.encode(rewritten, SCHEMAS, add_generation_prompt=True)
    assert sample.response_ids == tokenizer.encode(REPLIES[2], add_special_tokens=False)
    assert sample.loss_mask == [1] * len(sample.response_ids) and sample.num_turns == 3
