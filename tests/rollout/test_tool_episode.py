"""A multi-turn tool episode through the one episode loop: exact tokens, mask and logprobs.

Scripted with the FakeEngine (token ids from the real SmolLM2 ChatML tokenizer of ``tiny-qwen2``),
then the same episode with SmolLM2-135M-Instruct through the embedded engine.
"""

import asyncio
import json

import pytest

from agentrl.rollout import EpisodeRequest, Rollout, RolloutConfig, run_episode
from agentrl.testing import FakeEngine
from envs.tool_use import ToolUseEnv

QUESTION = {"question": "A warehouse has 17 shelves of 23 boxes. How many boxes?", "answer": "391"}
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17*23"}}\n</tool_call>'
ANSWER = "17 * 23 = 391, so the answer is \\boxed{391}."


def _request(**kw):
    return EpisodeRequest(env_id="agentrl/ToolUse-v0", options=dict(QUESTION), env_seed=0, **kw)


def _lp(n):
    return [round(-0.1 * (i + 1), 6) for i in range(n)]  # the FakeEngine's logprobs


def _opening():
    """The opening messages and tool schemas, from a separate env instance."""
    env = ToolUseEnv()
    messages, _ = env.reset(options=dict(QUESTION))
    tools = env.tool_schemas()
    env.close()
    return messages, tools


def test_scripted_tool_episode_has_exact_tokens_mask_and_logprobs(template, tokenizer, say):
    call_ids = tokenizer.encode(CALL + "<|im_end|>", add_special_tokens=False)
    answer_ids = say(ANSWER)
    engine = FakeEngine(script=[call_ids, answer_ids])
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig()))

    assert sample.status == "ok" and sample.error is None and sample.reward == 1.0 and sample.num_turns == 2
    opening, tools = _opening()
    assert [t["function"]["name"] for t in tools] == ["calculator", "python"]
    assert sample.prompt_ids == template.encode(opening, tools, add_generation_prompt=True)
    # the tool result, rendered on its own (fixed-prefix trick), and as ChatML writes it
    observation = [{"role": "tool", "name": "calculator", "content": "391"}]
    obs_ids = template.encode_continuation(observation, tools, True)
    assert tokenizer.decode(obs_ids) == "\n<|im_start|>tool\n391<|im_end|>\n<|im_start|>assistant\n"
    assert sample.response_ids == call_ids + obs_ids + answer_ids
    assert sample.loss_mask == [1] * len(call_ids) + [0] * len(obs_ids) + [1] * len(answer_ids)
    assert sample.rollout_logprobs == _lp(len(call_ids)) + [0.0] * len(obs_ids) + _lp(len(answer_ids))
    # the engine saw exactly these tokens, turn by turn
    assert [r[0] for r in engine.requests] == [sample.prompt_ids, sample.prompt_ids + call_ids + obs_ids]
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert sample.messages[2]["content"] == CALL and sample.messages[3] == observation[0]
    assert sample.metrics["tool_calls"] == 1 and sample.metrics["tool_errors"] == 0
    assert sample.metrics["generated_tokens"] == len(call_ids) + len(answer_ids)
    assert sample.metrics["observation_tokens"] == len(obs_ids)
    info = sample.metadata["env_info"]
    assert info["extracted"] == "391" and info["correct"] is True and info["episode_tool_calls"] == 1


def test_tool_errors_are_observations_and_metrics(template, tokenizer, say):
    bad = ('<tool_call>{"name": "calculater", "arguments": {"expression": "1"}}</tool_call>'
           '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>')
    engine = FakeEngine(script=[say(bad), say(CALL), say("\\boxed{392}")])
    config = RolloutConfig(env_kwargs={"tool_error_penalty": 0.1})
    sample = asyncio.run(run_episode(engine, template, _request(), config))
    assert sample.status == "ok" and sample.num_turns == 3
    assert sample.metrics["tool_calls"] == 3 and sample.metrics["tool_errors"] == 2
    assert sample.reward == pytest.approx(-0.2)  # wrong answer, two failed calls
    tool_messages = [m for m in sample.messages if m["role"] == "tool"]
    assert [m["content"].split(":")[0] for m in tool_messages] == ["Error", "Error", "391"]
    assert "did you mean 'calculator'" in tool_messages[0]["content"]


def test_turn_limit_truncates_a_tool_loop(template, say):
    engine = FakeEngine(script=[say(CALL)] * 4)
    sample = asyncio.run(run_episode(engine, template, _request(), RolloutConfig()))
    assert sample.status == "truncated" and sample.num_turns == 4 and sample.metrics["tool_calls"] == 4


def test_rollout_groups_sum_tool_metrics(template, say):
    from agentrl.data.prompts import PromptRow

    script = {0: say(CALL), 1: say(ANSWER)}

    def responder(input_ids, sampling):  # turn = tool results seen so far
        return script[min(input_ids.count(template.tokenizer.convert_tokens_to_ids("<|im_start|>")) // 2 - 1, 1)]

    rows = [PromptRow(index=i, prompt=QUESTION["question"], label="391", env_id="agentrl/ToolUse-v0")
            for i in range(3)]
    rollout = Rollout(FakeEngine(responder=responder), template, RolloutConfig(n_samples_per_prompt=2))
    result = asyncio.run(rollout.generate(lambda n: [rows.pop(0) for _ in range(min(n, len(rows)))], 3))
    assert len(result.samples) == 6 and all(s.reward == 1.0 and s.num_turns == 2 for s in result.samples)
    assert result.metrics["rollout/tool_calls_mean"] == 1.0 and result.metrics["rollout/tool_errors_mean"] == 0.0


def test_concurrency_benchmark_smoke(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "rollout_concurrency.py"
    spec = importlib.util.spec_from_file_location("rollout_concurrency", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    argv = ["--episodes", "6", "--baseline-episodes", "2", "--turns", "2", "--latency", "0.02", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "rollout_concurrency_cpu.json").read_text())
    rows = {r["case"]: r for r in record["rows"]}
    assert len(rows) == 5 and all(r["ok"] == r["episodes"] for r in rows.values())
    baseline = rows["async tool, concurrency 1 (baseline)"]
    assert baseline["ideal_s"] == baseline["serial_s"] == pytest.approx(2 * 2 * 0.02)
    assert rows["async tool"]["ideal_s"] == pytest.approx(2 * 0.02) and rows["async tool"]["wall_s"] > 0.04
    assert "| case | concurrency |" in (tmp_path / "rollout_concurrency_cpu.md").read_text()


@pytest.mark.slow
def test_smollm2_tool_episode_through_the_embedded_engine():
    """SmolLM2-135M-Instruct answers after a calculator turn; tokens, mask and logprobs agree with
    a teacher-forced forward pass of the same model over the final sequence."""
    embedded = pytest.importorskip("agentrl.engine.embedded")
    torch = pytest.importorskip("torch")
    from agentrl.chat import ChatTemplate
    from agentrl.engine.base import SamplingParams
    from agentrl.models import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    template = ChatTemplate(tokenizer)
    call_ids = tokenizer.encode(CALL + "<|im_end|>", add_special_tokens=False)

    class FirstTurnScripted:
        """The embedded engine, except that the first turn is the scripted calculator call."""

        def __init__(self, engine):
            self.engine, self.calls = engine, 0

        async def generate(self, input_ids, sampling, *, rid=None):
            self.calls += 1
            if self.calls == 1:
                return await FakeEngine(script=[call_ids]).generate(input_ids, sampling)
            return await self.engine.generate(input_ids, sampling, rid=rid)

    async def main():
        async with embedded.EmbeddedEngine(model, tokenizer, max_batch_size=2, max_seq_len=2048, seed=0) as engine:
            config = RolloutConfig(max_turns=2, max_new_tokens_per_turn=40, max_context_tokens=2048,
                                   sampling=SamplingParams(temperature=0.0))
            scripted = await run_episode(FirstTurnScripted(engine), template, _request(), config)
            free = await run_episode(engine, template, _request(), config)
            return scripted, free

    scripted, free = asyncio.run(main())
    for sample in (scripted, free):
        assert sample.status in ("ok", "truncated"), sample.error
        assert sample.num_turns >= 1 and sum(sample.loss_mask) > 0
        opening, tools = _opening()
        assert sample.prompt_ids == template.encode(opening, tools, add_generation_prompt=True)

    # after the scripted call: the real tool result, then the model's own turn
    obs_ids = template.encode_continuation([{"role": "tool", "name": "calculator", "content": "391"}],
                                           _opening()[1], True)
    n = len(call_ids) + len(obs_ids)
    assert scripted.response_ids[:n] == call_ids + obs_ids
    assert scripted.loss_mask[:n] == [1] * len(call_ids) + [0] * len(obs_ids)
    assert scripted.num_turns == 2 and scripted.metrics["tool_calls"] >= 1 and len(scripted.response_ids) > n
    generated = scripted.response_ids[n:]
    assert scripted.loss_mask[n:] == [1] * len(generated)
    assert scripted.messages[4]["content"] == tokenizer.decode(
        [t for t in generated if t not in template.stop_token_ids], skip_special_tokens=False)

    # token-in-token-out: the engine's logprobs are those of the recorded tokens in the recorded context
    ids = torch.tensor([scripted.prompt_ids + scripted.response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    recomputed = logprobs.gather(-1, targets[:, None])[:, 0][len(scripted.prompt_ids) - 1:]
    mask = torch.tensor(scripted.loss_mask, dtype=torch.bool)
    engine_lp = torch.tensor(scripted.rollout_logprobs)
    assert torch.allclose(recomputed[mask][len(call_ids):], engine_lp[mask][len(call_ids):], atol=2e-3)
    assert json.dumps(scripted.metadata["env_info"])  # JSON-serialisable info survives the episode
