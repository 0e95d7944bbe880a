"""ToolUseEnv / ToolUse-v0: tool turns, error messages, limits, timeouts, grading, prompts, check_env."""

import asyncio
import json
import threading
import time

import pytest

from agentrl.env import check_env, make
from envs.tool_use import SAMPLES, SYSTEM_PROMPT, ToolUseEnv
from tools.calculator import calculator


def call(name, **arguments):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


Q = {"question": "What is 17 * 23?", "answer": "391"}


def test_reset_declares_the_tools_in_the_system_message_and_schemas():
    env = ToolUseEnv()
    messages, info = env.reset(options=Q)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "What is 17 * 23?"
    system = messages[0]["content"]
    assert system.startswith(SYSTEM_PROMPT)
    assert '"name": "calculator"' in system and '"name": "python"' in system and "<tool_call>" in system
    assert [s["function"]["name"] for s in env.tool_schemas()] == ["calculator", "python"]
    assert info == {"gold": "391", "index": None, "tools": ["calculator", "python"]}
    env.close()


def test_system_message_options():
    env = ToolUseEnv(tools=["calculator"], describe_tools=False)
    assert env.reset(options=Q)[0][0]["content"] == SYSTEM_PROMPT
    env = ToolUseEnv(tools=["calculator"], describe_tools=False, system_prompt=None)
    assert [m["role"] for m in env.reset(options=Q)[0]] == ["user"]
    env = ToolUseEnv(tools=["calculator"], system_prompt=None)
    system = env.reset(options=Q)[0][0]["content"]
    assert system.startswith("You can call these tools") and "python" not in system
    # a chat prompt keeps its own system message, or gets ours prepended
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert env.reset(options={"prompt": own, "label": "4"})[0] == own
    assert [m["role"] for m in env.reset(options={"prompt": own[1:], "label": "4"})[0]] == ["system", "user"]


def test_tool_turn_then_correct_answer():
    env = ToolUseEnv(tools=["calculator"])
    env.reset(options=Q)
    obs, reward, terminated, truncated, info = env.step("Let me compute. " + call("calculator", expression="17*23"))
    assert obs == [{"role": "tool", "name": "calculator", "content": "391"}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["tool_errors"] == 0 and info["extracted"] is None
    obs, reward, terminated, truncated, info = env.step("17 * 23 = \\boxed{391}")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["extracted"] == "391" and info["correct"] is True and info["answer_format"] == "boxed"
    assert (info["tool_calls"], info["tool_errors"]) == (0, 0)  # per step; the totals are separate
    assert (info["episode_tool_calls"], info["episode_tool_errors"]) == (1, 0)
    assert env.step("again")[2] is True  # after the end: a clean terminal step, no exception
    env.close()


def test_several_calls_answered_in_order():
    env = ToolUseEnv(tools=["calculator"])
    env.reset(options=Q)
    action = call("calculator", expression="2**10") + " and " + call("calculator", expression="7*6")
    obs, _, _, _, info = env.step(action)
    assert [m["content"] for m in obs] == ["1024", "42"] and info["tool_calls"] == 2


def test_malformed_unknown_and_bad_argument_calls_are_tool_messages_and_counted():
    env = ToolUseEnv(tools=["calculator"])
    env.reset(options=Q)
    action = ('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'
              + call("calculater", expression="1+1") + call("calculator", expr="1+1")
              + call("calculator", expression="1/0"))
    obs, reward, terminated, _, info = env.step(action)
    assert [m["role"] for m in obs] == ["tool"] * 4 and not terminated and reward == 0.0
    assert obs[0]["content"].startswith("Error: malformed tool call: invalid JSON")
    assert "unknown tool 'calculater' (did you mean 'calculator'?)" in obs[1]["content"]
    assert "unexpected argument 'expr'" in obs[2]["content"]
    assert "Usage: calculator(expression: string)" in obs[2]["content"]
    assert obs[3]["content"] == "Error: division by zero"  # the tool's own answer: not a failed call
    assert info["tool_calls"] == 4 and info["tool_errors"] == 3
    assert info["tool_error_kinds"] == {"bad_arguments": 1, "parse_error": 1, "unknown_tool": 1}


def test_calls_beyond_the_limit_get_one_message():
    env = ToolUseEnv(tools=["calculator"], max_tool_calls_per_turn=3)
    env.reset(options=Q)
    obs, _, _, _, info = env.step(call("calculator", expression="1+1") * 10)
    assert [m["content"] for m in obs[:3]] == ["2"] * 3 and len(obs) == 4
    assert obs[3]["content"].startswith("Error: 7 more tool call(s) in your message were not run: at most 3")
    assert (info["tool_calls"], info["tool_errors"], info["tool_calls_skipped"]) == (10, 1, 7)
    assert info["tool_error_kinds"] == {"too_many_calls": 1}


def test_timeout_is_an_error_message():
    async def slow(seconds: float) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        await asyncio.sleep(seconds)
        return "done"

    env = ToolUseEnv(tools=[slow], tool_timeout=0.1)
    env.reset(options=Q)
    start = time.perf_counter()
    obs, _, _, _, info = env.step(call("slow", seconds=5) + call("slow", seconds=0.01))
    assert time.perf_counter() - start < 2
    assert obs[0]["content"] == "Error: tool 'slow' timed out after 0.1 s" and obs[1]["content"] == "done"
    assert info["tool_errors"] == 1 and info["tool_error_kinds"] == {"timeout": 1}


def test_rewards_format_fallback_and_tool_error_penalty():
    env = ToolUseEnv(tools=["calculator"], format_reward=0.1, tool_error_penalty=0.05)
    env.reset(options=Q)
    _, reward, _, _, info = env.step(call("nope") + call("calculator", expression=""))
    assert info["tool_errors"] == 1 and reward == pytest.approx(-0.05)  # '' -> "Error: empty expression" is ok
    _, reward, _, _, info = env.step("\\boxed{390}")
    assert reward == pytest.approx(0.1) and info["extracted"] == "390" and info["episode_tool_errors"] == 1
    env.reset(options=Q)
    _, reward, _, _, info = env.step("I think it is 391.")  # no format: the last number is graded
    assert reward == 1.0 and info["answer_format"] == "last_number"
    env.reset(options=Q)
    assert env.step("I think it is 390.")[1] == 0.0  # wrong and no explicit format: no format reward
    env.reset(options={"prompt": "How many?", "label": "She has 3 + 4 = 7.\n#### 7"})
    assert env.step("<answer>7</answer>")[1] == 1.0
    strict = ToolUseEnv(tools=["calculator"], fallback_last_number=False)
    strict.reset(options=Q)
    _, reward, _, _, info = strict.step("391")
    assert reward == 0.0 and info["extracted"] is None


def test_python_tool_runs_in_the_sandbox():
    env = ToolUseEnv(tools=["python"])
    env.reset(options=Q)
    obs, _, _, _, info = env.step(call("python", code="print(sum(range(1, 251)))"))
    assert obs[0]["name"] == "python" and obs[0]["content"].splitlines()[0] == "31375"
    assert info["tool_errors"] == 0
    env.close()


def test_reset_without_question_draws_seeded_samples():
    env = ToolUseEnv(tools=["calculator"])
    first = [env.reset(seed=s)[0][-1]["content"] for s in range(6)]
    assert first == [env.reset(seed=s)[0][-1]["content"] for s in range(6)] and len(set(first)) > 1
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()]
    messages, info = env.reset(options={"index": 2})
    assert messages[-1]["content"] == rows[2]["question"] and info["gold"] == rows[2]["answer"] and info["index"] == 2
    with pytest.raises(IndexError):
        env.reset(options={"index": len(rows)})
    with pytest.raises(ValueError, match="need 'answer'"):
        env.reset(options={"question": "2+2?"})


def test_sample_answers_are_plain_numbers():
    rows = [json.loads(line) for line in SAMPLES.read_text().splitlines()]
    assert len(rows) >= 20
    for row in rows:
        assert set(row) == {"question", "answer"}
        float(row["answer"])


def test_sync_tools_run_on_the_env_pool_not_the_default_executor():
    seen = []

    def nap(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: How long.
        """
        seen.append(threading.current_thread().name)
        time.sleep(seconds)
        return "ok"

    assert ToolUseEnv(tools=[nap]).tool_schemas()[0]["function"]["parameters"]["required"] == ["seconds"]

    async def episodes(n, **kw):
        envs = [ToolUseEnv(tools=[nap], **kw) for _ in range(n)]
        for e in envs:
            await e.areset(options=Q)
        start = time.perf_counter()
        results = await asyncio.gather(*(e.astep(call("nap", seconds=0.3)) for e in envs))
        took = time.perf_counter() - start
        for e in envs:
            e.close()
        assert all(r[0][0]["content"] == "ok" for r in results)
        return took

    # the default executor has min(32, cpus + 4) threads: 24 sleeping calls need several waves there
    took = asyncio.run(episodes(24))
    assert took < 1.0, f"24 concurrent 0.3 s sync tool calls took {took:.2f} s"
    assert all(name.startswith("ToolUseEnv-tool") for name in seen)
    seen.clear()
    asyncio.run(episodes(2, tool_threads=0))
    assert seen and not any(name.startswith("ToolUseEnv-tool") for name in seen)


def test_callable_objects_and_errors_in_construction():
    class Adder:
        __name__ = "add"

        def __call__(self, a: int, b: int) -> int:
            """Add.

            Args:
                a: First.
                b: Second.
            """
            return a + b

    env = ToolUseEnv(tools=[Adder(), calculator])
    env.reset(options=Q)
    obs = env.step(call("add", a=2, b=3))[0]
    assert obs == [{"role": "tool", "name": "add", "content": "5"}]
    env.close()
    with pytest.raises(ValueError, match="did you mean 'python'"):
        ToolUseEnv(tools=["pyhton"])
    with pytest.raises(TypeError, match="tool name"):
        ToolUseEnv(tools=[lambda x: x])
    with pytest.raises(ValueError, match="max_tool_calls_per_turn"):
        ToolUseEnv(max_tool_calls_per_turn=0)
    with pytest.raises(ValueError, match="non-empty"):
        ToolUseEnv(tools="calculator")


def test_registered_env_passes_check_env_and_has_a_turn_limit():
    report = check_env(lambda: make("agentrl/ToolUse-v0"))
    assert report.ok, report.problems
    env = make("agentrl/ToolUse-v0")
    env.reset(options=Q)
    results = [env.step(call("calculator", expression="1+1")) for _ in range(4)]
    assert [r[3] for r in results] == [False, False, False, True]  # truncated by max_turns=4
    env.close()
