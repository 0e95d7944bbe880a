"""ReasoningGymEnv: the task's own scorer, answer extraction, seed splits, errors, check_env."""

import pytest

pytest.importorskip("reasoning_gym")

from agentrl.env import check_env, make  # noqa: E402
from envs.reasoning_gym_env import EVAL_SEED_OFFSET, ReasoningGymEnv, extract_rg_answer  # noqa: E402


@pytest.fixture(scope="module")
def legs():
    return ReasoningGymEnv("leg_counting", size=50, seed=0)


def test_right_and_wrong_answers_scored_by_the_task(legs):
    messages, info = legs.reset(options={"index": 7})
    gold = legs.entry["answer"]
    assert legs.entry["question"].strip() in messages[-1]["content"] and "<answer>" in messages[-1]["content"]
    assert info == {"task": "leg_counting", "index": 7, "dataset_seed": 0, "split": "train"}
    obs, reward, terminated, truncated, info = legs.step(f"Counting legs...\n<answer>{gold}</answer>")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["extracted"] == gold and info["score"] == 1.0 and info["answer_format"] == "answer_tag"

    legs.reset(options={"index": 7})
    wrong = str(int(gold) + 1)
    assert legs.step(f"<answer>{wrong}</answer>")[1] == 0.0
    # leg_counting's scorer gives partial credit when the gold answer is inside a longer one
    legs.reset(options={"index": 7})
    answer = f"{gold} legs"
    assert legs.step(f"<answer>{answer}</answer>")[1] == pytest.approx(len(gold) / len(answer))


def test_extraction_order():
    assert extract_rg_answer("x \\boxed{3} then <answer>4</answer>") == ("4", "answer_tag")
    assert extract_rg_answer("so \\boxed{3}.\nDone") == ("3", "boxed")
    assert extract_rg_answer("thinking\n\n  12  \n") == ("12", "last_line")
    assert extract_rg_answer("   ") == (None, None)


def test_basic_arithmetic_via_boxed():
    env = ReasoningGymEnv("basic_arithmetic", size=20, seed=1)
    env.reset(options={"index": 0})
    assert env.step(f"The result is \\boxed{{{env.entry['answer']}}}")[1] == 1.0


def test_seed_decides_items_and_eval_split_is_held_out():
    a = ReasoningGymEnv("basic_arithmetic", size=30, seed=5)
    b = ReasoningGymEnv("basic_arithmetic", size=30, seed=5)
    held_out = ReasoningGymEnv("basic_arithmetic", size=30, seed=5, split="eval")
    assert held_out.dataset_seed == 5 + EVAL_SEED_OFFSET
    train_q = [a.dataset[i]["question"] for i in range(30)]
    assert train_q == [b.dataset[i]["question"] for i in range(30)]
    eval_q = [held_out.dataset[i]["question"] for i in range(30)]
    assert len(set(train_q) & set(eval_q)) < 5  # different seeds: (almost) disjoint items
    assert a.reset(seed=3) == b.reset(seed=3)


def test_entry_option_and_scorer_errors_are_data(legs):
    entry = legs.dataset[2]
    legs.reset(options={"entry": entry})
    assert legs.index is None and legs.step(f"<answer>{entry['answer']}</answer>")[1] == 1.0
    legs.reset(options={"entry": {"question": "How many legs?"}})  # no answer: the scorer raises KeyError
    _, reward, terminated, _, info = legs.step("<answer>4</answer>")
    assert reward == 0.0 and terminated and "KeyError" in info["error"]
    legs.reset(options={"index": 0})
    _, reward, _, _, info = legs.step("<answer>" + "9" * 20_000 + "</answer>")
    assert reward == 0.0 and "not scored" in info["error"]


def test_configuration_errors():
    with pytest.raises(ValueError, match="did you mean 'leg_counting'"):
        ReasoningGymEnv("leg_countin")
    with pytest.raises(TypeError, match="min_animals"):
        ReasoningGymEnv("leg_counting", config={"max_legs": 3})
    with pytest.raises(ValueError, match="not inside config"):
        ReasoningGymEnv("leg_counting", config={"seed": 3})
    with pytest.raises(ValueError, match="split"):
        ReasoningGymEnv("leg_counting", split="test")
    with pytest.raises(IndexError):
        ReasoningGymEnv("leg_counting", size=5).reset(options={"index": 5})


def test_task_config_passes_through():
    env = ReasoningGymEnv("leg_counting", size=10, config={"min_animals": 1, "max_animals": 1})
    assert all(len(env.dataset[i]["metadata"]["animals"]) == 1 for i in range(10))


def test_registered_env_passes_check_env():
    report = check_env(lambda: make("ReasoningGym-v0"))
    assert report.ok, report.problems
