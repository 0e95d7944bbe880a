"""slime-shaped hooks (``generate(args, sample, sampling_params)``, ``reward(args, sample)``) run unchanged:
hook files written as slime's examples write them (tests/fixtures/slime_hooks), against the run's engine
served over SGLang's HTTP API, and in a 2-rollout training run with a tiny model."""

import asyncio
import json
from pathlib import Path

import pytest

from agentrl.data import PromptRow, PromptSampler
from agentrl.rollout import Rollout, RolloutConfig, load_generate_fn, load_reward_fn
from agentrl.rollout.slime_hooks import SlimeArgs, is_slime_generate, is_slime_reward
from agentrl.testing import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests" / "fixtures" / "slime_hooks"
GENERATE = f"{HOOKS / 'generate_with_feedback.py'}:generate"
REWARD = f"{HOOKS / 'reward_func.py'}:reward_func"


def test_the_shape_is_recognised_by_signature():
    async def slime_generate(args, sample, sampling_params):
        return sample

    async def agentrl_generate(engine, template, request, config, *, reward_fn=None):
        return None

    async def slime_reward(args, sample, **kwargs):
        return 1.0

    assert is_slime_generate(slime_generate) and not is_slime_generate(agentrl_generate)
    assert is_slime_reward(slime_reward) and not is_slime_reward(lambda sample: 1.0)


def test_slime_hooks_run_a_rollout_against_the_served_engine(template, tokenizer):
    def respond(ids, sampling):  # 41 first; 42 once the hook asked to check
        answer = "42" if "check your answer" in tokenizer.decode(ids) else "41"
        return tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)

    engine = FakeEngine(responder=respond)
    generate, reward = load_generate_fn(GENERATE), load_reward_fn(REWARD)
    rows = [PromptRow(index=0, prompt="What is 40 + 2?", label="42", env_id="agentrl/Math-v0",
                      options={"question": "What is 40 + 2?", "answer": "42"})]
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=2, max_new_tokens_per_turn=8),
                      generate_fn=generate, reward_fn=reward, filters=())
    result = asyncio.run(rollout.generate(PromptSampler(rows).next_batch, batch_size=1))
    samples = result.groups[0].samples
    assert [s.status for s in samples] == ["ok", "ok"], [s.error for s in samples]
    for s in samples:
        text = tokenizer.decode(s.response_ids)
        assert text.startswith("41<|im_end|>") and "check your answer" in text and text.endswith("42<|im_end|>")
        assert tokenizer.decode(s.prompt_ids).endswith("<|im_start|>assistant\n")  # the env's prompt, templated
        generated = [t for t, m in zip(s.response_ids, s.loss_mask) if m]
        assert tokenizer.decode(generated) == "41<|im_end|>42<|im_end|>"  # the feedback has mask 0
        assert s.reward == 1.0  # the slime reward hook read sample.response and sample.label
    assert {tuple(s.rollout_logprobs) for s in samples} == {tuple(samples[0].rollout_logprobs)}


def test_without_a_reward_hook_the_environment_grades_the_response(template, tokenizer):
    engine = FakeEngine(responder=lambda ids, sp: tokenizer.encode("\\boxed{42}<|im_end|>", add_special_tokens=False))
    rows = [PromptRow(index=0, prompt="-", label="42", env_id="agentrl/Math-v0",
                      options={"question": "What is 40 + 2?", "answer": "42"})]
    rollout = Rollout(engine, template, RolloutConfig(n_samples_per_prompt=1), generate_fn=load_generate_fn(GENERATE),
                      filters=())
    sample = asyncio.run(rollout.generate(PromptSampler(rows).next_batch, batch_size=1)).groups[0].samples[0]
    assert sample.status == "ok" and sample.reward == 1.0


def test_args_name_what_they_carry():
    with pytest.raises(AttributeError, match=r"args.use_rollout_routing_replay has no agentrl counterpart.*partial_rollout"):
        _ = SlimeArgs(partial_rollout=False).use_rollout_routing_replay


def test_slime_hooks_in_a_two_rollout_training_run(tmp_path, monkeypatch):
    from agentrl.train_cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    code = main(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "2",
                 "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4",
                 "--rollout-max-response-len", "8", "--eval-interval", "0", "--no-gradient-checkpointing",
                 "--entropy-coef", "0.01",  # a step with equal rewards still trains (no-signal steps are skipped)
                 "--custom-generate-function-path", GENERATE, "--custom-rm-path", REWARD,
                 "--output-dir", str(out), "--save", str(out / "ckpt")], prog="train.py")
    assert code in (0, None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time" in r]
    assert len(steps) == 2
    assert all(r.get("rollout/status_failed", 0) == 0 for r in steps), steps
    assert all(r["rollout/turns_mean"] >= 1 and "train/loss" in r for r in steps)
    # the hook's tokens and log-probabilities are the engine's: the trainer recomputes the same ones
    assert all(r["train/rollout_train_abs_diff"] < 1e-3 for r in steps)
