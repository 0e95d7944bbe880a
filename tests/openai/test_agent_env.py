"""Agents as environments: registered ids used by the rollout and check_env unchanged; failures are data;
budgets truncate; the in-rollout endpoint refuses calls without a valid episode key."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from agentrl.data.demos import DemoError, demo_samples, oracle_demos
from agentrl.data.prompts import PromptRow
from agentrl.env import check_env, make
from agentrl.env.agent import AgentEnv, register_agent
from agentrl.env.exploits import check_exploits
from agentrl.rollout.config import RolloutConfig
from agentrl.rollout.episode import EpisodeRequest, run_episode
from agentrl.rollout.generate import Rollout
from agentrl.testing import FakeEngine


def _engine(tokenizer, text: str = "apple<|im_end|>") -> FakeEngine:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return FakeEngine(responder=lambda prompt, sampling: ids)


async def word_agent(client, task):
    """Asks once, retries once with feedback, returns a reward and named components."""
    messages = [{"role": "user", "content": f"Say the word {task['word']}."}]
    out = await client.chat.completions.create(model="policy", messages=messages)
    said = out.choices[0].message.content or ""
    if task["word"] not in said:
        messages += [out.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "Again."}]
        said = (await client.chat.completions.create(model="policy", messages=messages)).choices[0].message.content or ""
    hit = float(task["word"] in said)
    return {"reward": hit, "said": hit, "info": {"said": said}}


async def chatty_agent(client, task):
    """Keeps the conversation going until the endpoint refuses a call."""
    messages = [{"role": "user", "content": "Talk to me."}]
    while True:
        out = await client.chat.completions.create(model="policy", messages=messages)
        messages += [out.choices[0].message.model_dump(exclude_none=True), {"role": "user", "content": "More."}]


async def broken_agent(client, task):
    await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}])
    raise KeyError("the agent's own bug")


def test_a_registered_agent_runs_in_rollout_groups(tokenizer, template):
    register_agent("WordAgentTest-v0", word_agent, tasks=[{"word": "apple"}], max_turns=4)
    assert isinstance(make("agentrl/WordAgentTest-v0").unwrapped, AgentEnv)
    rollout = Rollout(_engine(tokenizer), template, RolloutConfig(n_samples_per_prompt=3),
                      default_env_id="agentrl/WordAgentTest-v0")
    rows = [PromptRow(index=i, prompt=None, options={"word": w}) for i, w in enumerate(["apple", "pear"])]
    result = asyncio.run(rollout.generate(lambda n: [rows.pop(0) for _ in range(n)], batch_size=2))
    samples = sorted(result.samples, key=lambda s: s.group_id)
    assert [s.status for s in samples] == ["ok"] * 6
    assert [s.reward for s in samples] == [1.0] * 3 + [0.0] * 3  # the pear agent asked twice, heard apple twice
    assert [s.num_turns for s in samples] == [1] * 3 + [2] * 3
    info = samples[0].metadata["env_info"]
    assert info["reward_components"] == {"said": 1.0} and info["said"] == "apple"
    assert all(s.loss_mask.count(1) > 0 for s in samples)
    assert [s.turn_rewards for s in samples] == [[1.0]] * 3 + [[0.0, 0.0]] * 3  # the outcome on the last call
    assert samples[0].rewards == {"said": 1.0}
    assert result.metrics["rollout/segments_mean"] == 1.0 and result.metrics["rollout/turns_mean"] == 1.5


def test_check_env_drives_the_agent_with_malformed_model_output():
    report = check_env(lambda: AgentEnv(word_agent, tasks=[{"word": "apple"}, {"word": "river"}]), fuzz_samples=2)
    assert report.ok, report.problems

    async def fragile_agent(client, task):
        out = await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "2+2?"}])
        return float(int(out.choices[0].message.content) == 4)  # model output that is not a number breaks it

    broken = check_env(lambda: AgentEnv(fragile_agent, tasks=[{}]), fuzz_samples=0)
    assert not broken.ok and any("ValueError: invalid literal for int()" in p for p in broken.problems)


def test_agent_failures_are_data_and_budgets_truncate(tokenizer, template):
    def episode(agent, config=None, **kwargs):
        return asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"),
                                       config or RolloutConfig(),
                                       env=AgentEnv(agent, tasks=[{}], **kwargs)))

    failed = episode(broken_agent)
    assert failed.status == "failed" and "the agent's own bug" in failed.error and failed.num_turns == 1
    truncated = episode(chatty_agent, max_calls=3)
    assert truncated.status == "truncated" and truncated.num_turns == 3
    full = episode(chatty_agent, RolloutConfig(max_context_tokens=120))
    assert full.status == "truncated" and len(full.prompt_ids) + len(full.response_ids) >= 100

    async def silent_agent(client, task):
        return 1.0

    assert "without calling the model" in episode(silent_agent).error


def test_the_rollout_endpoint_wants_a_live_episode_key(tokenizer, template):
    seen = {}

    async def probing_agent(client, task):
        base = str(client.base_url).split("/episodes/")[0]
        for name, url, key in [("no key", base + "/v1", "sk-none"), ("unknown key", base + "/episodes/nope/v1", "x")]:
            other = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)
            try:
                await other.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}])
            except openai.APIStatusError as exc:
                seen[name] = exc.status_code
            await other.close()
        try:
            await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        except openai.NotFoundError as exc:
            seen["model"] = exc.body["code"]
        out = await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}])
        return float(out.choices[0].message.content == "apple")

    sample = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"), RolloutConfig(),
                                     env=AgentEnv(probing_agent, tasks=[{}])))
    assert sample.status == "ok" and sample.reward == 1.0
    assert seen == {"no key": 401, "unknown key": 404, "model": "model_not_found"}


@pytest.mark.parametrize("returned", [None, 0.5])
def test_an_agent_without_a_reward_is_scored_by_the_reward_function(tokenizer, template, returned):
    async def agent(client, task):
        await client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "Hi"}])
        return returned

    sample = asyncio.run(run_episode(_engine(tokenizer), template, EpisodeRequest(env_id="agent"), RolloutConfig(),
                                     env=AgentEnv(agent, tasks=[{}]),
                                     reward_fn=lambda s: float(s.messages[-1]["content"] == "apple")))
    assert sample.status == "ok" and sample.reward == 1.0


ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}


async def adder_agent(client, task):
    """Offers an ``add`` tool (declared to the template with ``tools=``), runs its calls, grades the answer."""
    messages, called = [{"role": "user", "content": f"What is {task['a']} + {task['b']}?"}], 0.0
    for _ in range(3):
        message = (await client.chat.completions.create(model="policy", messages=messages, tools=[ADD])).choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return {"task": float((message.content or "").strip() == str(task["a"] + task["b"])), "shaped": called}
        called = 0.1
        for call in message.tool_calls:
            args = json.loads(call.function.arguments)
            total = args.get("a", 0) + args.get("b", 0) if isinstance(args, dict) else "not an object"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": str(total)})
    return 0.0


def adder_oracle(task):
    call = json.dumps({"name": "add", "arguments": {"a": task["a"], "b": task["b"]}})
    return [f"<tool_call>{call}</tool_call>", str(task["a"] + task["b"])]


def test_the_oracle_demonstrates_the_agents_own_conversations_token_for_token(tokenizer, template):
    """--sft-data oracle on an agent: the demonstration is the sample a rollout of the same replies gives."""
    register_agent("AdderAgentTest-v0", adder_agent, max_turns=3, oracle=adder_oracle, tokenizer="tiny-qwen2")
    task = {"a": 12, "b": 30}
    replies = [template.tokenize(r) + list(template.end_of_turn_ids) for r in adder_oracle(task)]
    calls = iter(replies)
    rollout = Rollout(FakeEngine(responder=lambda prompt, sampling: next(calls)), template,
                      RolloutConfig(n_samples_per_prompt=1, max_turns=3), default_env_id="agentrl/AdderAgentTest-v0")
    row = PromptRow(index=0, prompt=None, options=task)
    played = asyncio.run(rollout.generate(lambda n: [row], batch_size=1)).samples[0]
    assert played.status == "ok" and played.rewards == {"task": 1.0, "shaped": 0.1} and played.num_turns == 2

    demos = asyncio.run(oracle_demos(rollout, [row]))
    assert len(demos) == 1 and demos[0].tools == [ADD]  # the tools the agent offered reach the template
    demo = demo_samples(template, demos)[0]
    assert demo.prompt_ids + demo.response_ids == played.prompt_ids + played.response_ids
    assert demo.loss_mask == played.loss_mask and demo.loss_mask.count(1) == sum(map(len, replies))

    wrong = AgentEnv(adder_agent, tasks=[task], oracle=lambda t: ["41"], tokenizer="tiny-qwen2")
    assert "oracle" in [f.cheat for f in check_exploits(lambda: wrong, seeds=[0]).findings]  # it did not win
    report = check_exploits(lambda: AgentEnv(adder_agent, tasks=[task], oracle=adder_oracle, tokenizer="tiny-qwen2"),
                            seeds=[0])
    assert report.oracle_checked and report.returns["oracle"] == pytest.approx(1.1)
    assert "oracle" not in [f.cheat for f in report.findings] and not report.problems
    assert AgentEnv(adder_agent, tasks=[task]).oracle is None

    # an oracle that raises or returns something else is recorded per row and the row left out
    def oracle_of(fn):
        name = f"AdderBadOracleTest{next(ids)}-v0"
        register_agent(name, adder_agent, max_turns=3, oracle=fn, tokenizer="tiny-qwen2")
        return Rollout(FakeEngine(script=[]), template, RolloutConfig(max_turns=3), default_env_id=f"agentrl/{name}")

    def flaky(t):
        if t["a"] == 1:
            raise RuntimeError("no answer for this one")
        return adder_oracle(t)

    ids = iter(range(10))
    other = PromptRow(index=1, prompt=None, options={"a": 1, "b": 2})
    assert len(asyncio.run(oracle_demos(oracle_of(flaky), [other, row]))) == 1  # the row it could play is kept
    for bad, says in [(flaky, "RuntimeError: no answer for this one"), (lambda t: 42, "must return a reply string"),
                      (lambda t: [1, 2], "must return a reply string")]:
        with pytest.raises(DemoError, match="succeeded on none of 1 training rows") as err:
            asyncio.run(oracle_demos(oracle_of(bad), [other]))
        assert "1 raised; first: agentrl/AdderBadOracleTest" in str(err.value) and "-v0 row 1: " in str(err.value)
        assert says in str(err.value)
    with pytest.raises(DemoError, match="has no oracle"):
        register_agent("AdderNoOracleTest-v0", adder_agent, max_turns=3)
        asyncio.run(oracle_demos(Rollout(FakeEngine(script=[]), template, RolloutConfig(),
                                         default_env_id="agentrl/AdderNoOracleTest-v0"), [row]))


@pytest.mark.parametrize("where", ["worker thread", "event loop"])
def test_close_stops_the_agent_of_an_episode_in_progress(where):
    """close() mid-episode ends the agent's task and its endpoint on the agent's own event loop, whether it is
    called from a worker thread (as the oracle's demonstrations close their environments) or on that loop."""
    async def main():
        env = AgentEnv(adder_agent, tasks=[{"a": 1, "b": 2}], tokenizer="tiny-qwen2")
        messages, _ = await env.areset(seed=0)
        assert "1 + 2" in messages[-1]["content"]
        run = env._text_run
        if where == "worker thread":
            await asyncio.to_thread(env.close)
        else:
            env.close()
            for _ in range(100):
                if run.endpoint is None:
                    break
                await asyncio.sleep(0.01)
        assert run.agent_task.done() and run.endpoint is None and env._text_run is None

    asyncio.run(main())  # an agent task left running would be reported at shutdown
