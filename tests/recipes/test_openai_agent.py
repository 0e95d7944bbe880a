"""recipes/openai_agent: the agent's oracle wins every task through the agent program itself."""

import json
from pathlib import Path

import pytest

from agentrl.env.agent import AgentEnv

ROOT = Path(__file__).resolve().parents[2]
AGENT = "recipes/openai_agent/agent.py"


def _tasks(name):
    return [json.loads(line) for line in (ROOT / "recipes/openai_agent" / name).read_text().splitlines() if line]


@pytest.fixture()
def env(monkeypatch):
    monkeypatch.chdir(ROOT)
    env = AgentEnv(f"{AGENT}:solve", oracle=f"{AGENT}:oracle")
    yield env
    env.close()


def test_the_oracle_wins_every_task_with_one_tool_call(env):
    from agentrl.utils.imports import load_object

    tools = load_object(f"{AGENT}:TOOLS")
    for task in _tasks("train.jsonl") + _tasks("test.jsonl"):
        env.reset(options=task)
        assert env.tool_schemas() == tools
        plan = env.oracle(0)
        observation, reward, terminated, _, info = env.step(plan[0])
        tool_output = observation[-1]["content"]
        assert observation[-1]["role"] == "tool" and not tool_output.startswith("Error"), (task, observation)
        if isinstance(task["answer"], str):  # arithmetic: the calculator's result is the answer
            assert tool_output == task["answer"]
        _, reward, terminated, _, info = env.step(plan[1])
        assert terminated and reward == pytest.approx(1.1), (task, info)  # task 1 + the tool-call bonus 0.1
        assert info["tool_calls"] == 1


def test_a_wrong_answer_or_no_tool_earns_no_task_reward(env):
    task = _tasks("test.jsonl")[0]
    env.reset(options=task)
    _, reward, terminated, _, _ = env.step(str(int(task["answer"]) + 1))  # answered without the tool, wrongly
    assert terminated and reward == 0.0
    env.reset(options=task)
    env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>')
    _, reward, terminated, _, _ = env.step("2")
    assert terminated and reward == pytest.approx(0.1)  # the shaping term alone: bounded below a success
