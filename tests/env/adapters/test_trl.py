"""TRL's environment_factory contract through the adapter: tools from public methods with their schemas,
errors as tool messages, get_reward at the end; check-env with the exploit check; 2 training rollouts."""

from pathlib import Path

import gymnasium
import pytest

from agentrl.env import register
from agentrl.env.adapters.trl import TRLEnv
from agentrl.env.exploits import check_exploits
from agentrl.env.cli import main as check_env_main

FACTORY = f"{Path(__file__).with_name('trl_counter.py')}:Counter"


@pytest.fixture
def registered():
    register("TRLCounter-v0", "agentrl.env.adapters.trl:TRLEnv", max_turns=4, factory=FACTORY)
    yield "agentrl/TRLCounter-v0"
    del gymnasium.registry["agentrl/TRLCounter-v0"]


def test_tools_rewards_and_errors():
    env = TRLEnv(FACTORY)
    assert [s["function"]["name"] for s in env.tool_schemas()] == ["add", "increment"]
    add = env.tool_schemas()[0]["function"]
    assert add["parameters"]["properties"]["amount"]["type"] == "integer"
    assert "how much to add" in add["parameters"]["properties"]["amount"]["description"]
    messages, info = env.reset(options={"prompt": "Play.", "target": 3})
    assert messages[0]["content"].startswith("Play.\n\nThe counter is at 0. Bring it to exactly 3")
    out = env.step('<tool_call>{"name": "add", "arguments": {"amount": 9}}</tool_call>')
    assert out[0][0]["content"].startswith("Error") and "amount must be from 1 to 5" in out[0][0]["content"]
    assert out[1:3] == (0.0, False) and out[4]["tool_errors"] == 1
    env.step('<tool_call>{"name": "add", "arguments": {"amount": 2}}</tool_call>'
             '<tool_call>{"name": "increment", "arguments": {}}</tool_call>')
    assert env.step("done")[1:3] == (1.0, True)


def test_a_class_without_the_contract_is_refused():
    class NoReward:
        def reset(self):
            return "hi"

    with pytest.raises(TypeError, match="lacks get_reward"):
        TRLEnv(NoReward)


def test_check_env_and_exploits(registered, capsys):
    """``agentrl check-env --exploits`` on it, as a user runs it."""
    assert check_env_main([registered, "--exploits"]) == 0
    assert f"ok    {registered}" in capsys.readouterr().out


def test_two_rollouts(registered, two_rollouts):
    two_rollouts(registered, [{"target": 1}, {"target": 2}])


def test_the_exploit_check_finds_a_task_that_blind_tool_calls_solve():
    from agentrl.utils.imports import load_object

    counter = load_object(FACTORY)

    class Easy(counter):
        def reset(self, target: int = 2, **kwargs) -> str:  # two junk calls of increment reach 2
            return super().reset(target)

    report = check_exploits(lambda: TRLEnv(Easy), seeds=(0,))
    assert [f.cheat for f in report.findings] == ["tool results as candidates"]  # junk calls, then any reply
