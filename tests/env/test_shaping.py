"""Shaped reward components: they add up to the reward, no scripted exploit earns a success's return, held-out
success counts the task alone, and the curriculum follows the success rate."""

import functools

import pytest

from agentrl.data import PromptRow, PromptSampler
from agentrl.data.curriculum import CurriculumConfig, CurriculumSampler
from agentrl.env import make
from agentrl.env.shaping import check_shaping, combine, shaping_weights, task_reward
from agentrl.types import Group, Sample

PROBLEMS = [{"question": f"What is {a} * {b}?", "answer": str(a * b), "expression": f"{a}*{b}"}
            for a, b in ((17, 23), (48, 301), (99, 512))]


@pytest.mark.parametrize("env_id, kwargs, options", [
    ("agentrl/FrozenLake-v0", {"random_map_size": 4, "shaping": {"progress": 0.5}}, None),
    ("agentrl/ToolUse-v0", {"tools": ["calculator"], "shaping": {"tool_call": 0.5}}, PROBLEMS),
    ("agentrl/Search-v0", {"shaping": {"search": 0.5}},
     [{"question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare"]}] * 3),
])
def test_no_exploit_earns_what_the_oracle_earns(env_id, kwargs, options):
    assert check_shaping(functools.partial(make, env_id, **kwargs), seeds=[0, 1, 2], options=options) == []


def test_the_check_finds_a_term_worth_more_than_the_task():
    # a weight above the task's reward: calling the calculator and answering wrong beats solving it
    found = check_shaping(functools.partial(make, "agentrl/ToolUse-v0", tools=["calculator"],
                                            shaping={"tool_call": 1.5}), seeds=[0], options=PROBLEMS[:1])
    assert any("call_then_wrong earned" in p and "without solving the task" in p for p in found)


def test_progress_shaping_telescopes_and_leaves_the_goal_reward():
    env = make("agentrl/FrozenLake-v0", random_map_size=4, shaping={"progress": 0.2})
    env.reset(seed=3)
    total, task = 0.0, 0.0
    for _ in range(20):
        _, reward, terminated, truncated, info = env.step(env.unwrapped.oracle())
        total, task = total + reward, task + info["reward_components"]["task"]
        if terminated or truncated:
            break
    assert terminated and task == 1.0 and total == pytest.approx(1.2)  # phi goes 0 -> 1 along the path
    env.close()


def test_weights_are_checked_by_name_and_value():
    with pytest.raises(ValueError, match="did you mean 'progress'"):
        shaping_weights({"progres": 0.1}, {"progress": "..."}, "FrozenLake")
    with pytest.raises(ValueError, match=">= 0"):
        shaping_weights({"progress": -1}, {"progress": "..."}, "FrozenLake")
    assert combine(0.0, {"progress": 1.0}, {"progress": 0.25}) == (0.25, {"task": 0.0, "progress": 0.25})


def test_success_counts_the_task_alone():
    shaped_failure = Sample(reward=1.1, rewards={"task": 0.0, "progress": 1.1})
    assert task_reward(shaped_failure) == 0.0 and task_reward(Sample(reward=1.0)) == 1.0


def test_the_curriculum_follows_the_success_rate_and_resumes():
    rows = [PromptRow(index=i, prompt=None) for i in range(8)]
    c = CurriculumSampler(PromptSampler(rows), CurriculumConfig("map_size", ["3", "4", "5"], promote_at=0.5,
                                                                demote_at=0.2))
    assert {r.options["map_size"] for r in c.next_batch(4)} == {3}  # levels from the command line become numbers

    def rollout(*task):
        return [Group(0, [Sample(group_id=0, reward=t + 0.1, rewards={"task": t, "progress": 0.1}) for t in task])]

    assert c.update(rollout(1.0, 0.0, 0.0, 0.0)) == {"curriculum/level": 0.0, "curriculum/success": 0.25}
    assert c.update(rollout(1.0, 1.0, 0.0, 0.0))["curriculum/level"] == 1.0
    assert c.next_batch(1)[0].options["map_size"] == 4
    state = c.state_dict()
    assert c.update(rollout(0.0, 0.0, 0.0, 0.0))["curriculum/level"] == 0.0  # below demote_at: back one level
    resumed = CurriculumSampler(PromptSampler(rows), c.config)
    resumed.load_state_dict(state)
    assert resumed.level == 1 and resumed.next_batch(1)[0].options["map_size"] == 4
