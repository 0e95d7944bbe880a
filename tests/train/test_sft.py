"""The supervised warm start: demonstrations tokenized as the RL path tokenizes them, loss on the assistant's
tokens only, the NLL gradient through the RL objective, and a warm-started checkpoint that RL resumes exactly."""

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agentrl import algo
from agentrl.config import parse_args
from agentrl.data import PromptRow
from agentrl.data.demos import DemoError, demo_sample, load_demos, oracle_demos
from agentrl.loop import train
from agentrl.rollout import Rollout, RolloutConfig, run_episode
from agentrl.testing import FakeEngine
from agentrl.train.sft import sft_batch

ROOT = Path(__file__).resolve().parents[2]
QUESTION = {"question": "A warehouse has 17 shelves of 23 boxes. How many boxes?", "answer": "391",
            "expression": "17*23"}


def _engine_for(template, messages):
    """A scripted engine that writes the demonstration's assistant turns as an engine that stops on the
    end-of-turn token would return them."""
    replies = [template.tokenize(m["content"]) + template.end_of_turn_ids for m in messages if m["role"] == "assistant"]
    return FakeEngine(script=replies)


def _oracle_demo(template, env_id, options, env_kwargs=None, seed=0):
    rollout = Rollout(FakeEngine(script=[]), template, RolloutConfig(env_kwargs=env_kwargs or {}), default_env_id=env_id)
    row = PromptRow(index=0, prompt=None, options={**options, "seed": seed})
    (demo,) = asyncio.run(oracle_demos(rollout, [row]))
    return demo, rollout.requests_for(row, 0)[0]


@pytest.mark.parametrize("env_id, options, kwargs", [
    ("agentrl/ToolUse-v0", QUESTION, {"tools": ["calculator"]}),
    ("agentrl/FrozenLake-v0", {}, {"random_map_size": 4}),
    ("agentrl/Search-v0", {"question": "Who wrote Hamlet?", "golden_answers": ["William Shakespeare"]}, {}),
])
def test_demo_tokens_equal_the_rl_path_for_the_same_conversation(template, env_id, options, kwargs):
    demo, request = _oracle_demo(template, env_id, options, kwargs)
    demo_tokens = demo_sample(template, demo.messages, demo.tools)
    # the RL path: the same environment and seeds, an engine that writes the same assistant turns
    engine = _engine_for(template, demo.messages)
    rl = asyncio.run(run_episode(engine, template, request, RolloutConfig(env_kwargs=kwargs)))
    assert rl.status == "ok" and rl.reward >= 1.0
    assert demo_tokens.prompt_ids == rl.prompt_ids
    assert demo_tokens.response_ids == rl.response_ids
    assert demo_tokens.loss_mask == rl.loss_mask
    assert demo_tokens.messages == rl.messages
    assert demo_tokens.num_turns == rl.num_turns >= 2


def test_masks_cover_assistant_tokens_only(template, tokenizer):
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "17 * 23?"},
                {"role": "assistant", "content": call},
                {"role": "tool", "name": "calculator", "content": "391"},
                {"role": "user", "content": "And now?"},
                {"role": "assistant", "content": "\\boxed{391}"},
                {"role": "user", "content": "a message after the last turn is not rendered"}]
    s = demo_sample(template, messages)
    masked = [t for t, m in zip(s.response_ids, s.loss_mask) if m]
    assert tokenizer.decode(masked) == call + "<|im_end|>" + "\\boxed{391}<|im_end|>"
    unmasked = tokenizer.decode([t for t, m in zip(s.response_ids, s.loss_mask) if not m])
    assert unmasked == "\n<|im_start|>tool\n391<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    assert "17 * 23?" in tokenizer.decode(s.prompt_ids) and "not rendered" not in tokenizer.decode(s.tokens)
    batch = sft_batch([s])
    assert torch.equal(batch.advantages, batch.loss_mask) and batch.rollout_logprobs is None


def test_the_warm_start_step_is_the_nll_gradient():
    """Advantage 1, ratio 1: the clipped policy loss has the gradient of the token-mean negative log-likelihood."""
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1.0, 1, 0, 1, 1], [0, 0, 1, 1, 0]])
    lp = algo.logprobs_from_logits(logits, labels)
    loss, _ = algo.rl_objective(lp, mask.clone(), mask, config=algo.ObjectiveConfig(policy_loss="ppo"))
    (grad_rl,) = torch.autograd.grad(loss, logits)
    nll = -(algo.logprobs_from_logits(logits, labels) * mask).sum() / mask.sum()
    (grad_nll,) = torch.autograd.grad(nll, logits)
    assert torch.allclose(grad_rl, grad_nll, atol=1e-6)


def test_demo_files_are_checked(tmp_path, template):
    good = tmp_path / "demos.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                    + "\n\n")
    (demo,) = load_demos(good)
    assert demo.source == f"{good}:1" and demo_sample(template, demo.messages).num_turns == 1
    for bad, says in [({"messages": [{"role": "assistant", "content": "x"}]}, "opens with"),
                      ({"messages": [{"role": "user", "content": "x"}]}, "no assistant"),
                      ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]},
                       "message 0"),
                      ({"prompt": "x"}, 'expected {"messages"')]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(DemoError, match=says):
            load_demos(path)


def test_an_environment_without_an_oracle_says_so(template):
    rollout = Rollout(FakeEngine(script=[]), template, RolloutConfig(), default_env_id="agentrl/Guess-v0")
    with pytest.raises(DemoError, match="has no oracle"):
        asyncio.run(oracle_demos(rollout, [PromptRow(index=0, prompt="1+1?", label="2")]))


# -- a warm-started checkpoint, loaded into RL, resumes exactly ----------------------------------------------
ARGS = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--rollout-batch-size", "2",
        "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8", "--lr", "1e-3", "--eval-interval", "0",
        "--engine-max-batch-size", "8", "--custom-rm-path", "tests/_resume_reward.py:reward", "--rollout-concurrency",
        "1", "--sft-epochs", "2", "--sft-batch-size", "4"]
TIMING = ("perf/", "rollout/time", "rollout/tokens_per_s", "rollout/time_", "engine/", "sft/time")


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k != "time" and not k.startswith(TIMING)} for r in rows}


def test_a_warm_started_checkpoint_loads_into_rl_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    demos = tmp_path / "demos.jsonl"
    rows = [json.loads(line) for line in (ROOT / "recipes/quickstart/train.jsonl").read_text().splitlines()[:8]]
    demos.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{r['prompt']} Answer with just the number."},
        {"role": "assistant", "content": r["label"]}]}) + "\n" for r in rows))
    straight, warm, resumed = tmp_path / "straight", tmp_path / "warm", tmp_path / "resumed"
    # one run: warm start, then 2 rollouts
    train(parse_args([*ARGS, "--sft-data", str(demos), "--num-rollout", "2", "--output-dir", str(straight),
                      "--save", str(straight / "ckpt")]))
    # the warm start alone, then RL from its checkpoint
    summary = train(parse_args([*ARGS, "--sft-data", str(demos), "--num-rollout", "0", "--output-dir", str(warm),
                                "--save", str(warm / "ckpt")]))
    assert summary["rollouts"] == 0 and (warm / "ckpt" / "latest").read_text() == "rollout_00000"
    train(parse_args([*ARGS, "--num-rollout", "2", "--output-dir", str(resumed), "--save", str(resumed / "ckpt"),
                      "--load", str(warm / "ckpt")]))
    warmed = load_file(straight / "ckpt" / "rollout_00000" / "model" / "model.safetensors")
    alone = load_file(warm / "ckpt" / "rollout_00000" / "model" / "model.safetensors")
    assert all(torch.equal(warmed[n], alone[n]) for n in warmed)  # the same warm start in both runs
    a = load_file(straight / "ckpt" / "rollout_00002" / "model" / "model.safetensors")
    b = load_file(resumed / "ckpt" / "rollout_00002" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], warmed[n]) for n in a)  # RL moved them further
    ma, mb = _metrics(straight), _metrics(resumed)
    for step in (1, 2):
        diff = {k: (ma[step].get(k), mb[step].get(k)) for k in ma[step].keys() | mb[step].keys()
                if ma[step].get(k) != mb[step].get(k)}
        assert not diff, (step, diff)
    sft = ma[0]
    assert sft["sft/steps"] == 4 and sft["sft/demos"] == 8 and sft["sft/nll_last"] < sft["sft/nll_first"]
