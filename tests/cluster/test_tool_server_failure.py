"""A retrieval server that dies mid-rollout: the affected episodes get a tool-error observation,
the others are untouched, and every group comes back exactly once."""

import asyncio
from pathlib import Path

from agentrl.data import PromptRow, PromptSampler
from agentrl.engine import SamplingParams
from agentrl.engine.server import BackgroundServer
from agentrl.rollout import Rollout, RolloutConfig
from agentrl.testing import FakeEngine
from tools.retriever import load_retriever
from tools.retriever.server import create_app

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "search" / "corpus.jsonl"


def test_retrieval_server_killed_mid_rollout(template, tokenizer):
    server = BackgroundServer(create_app(load_retriever(CORPUS, "bm25", cache=False), default_topk=2, max_topk=5))
    server.__enter__()
    calls = 0

    def respond(input_ids, sampling):
        nonlocal calls
        calls += 1
        if calls == 5:  # two episodes have searched by now; the server goes away
            server.__exit__(None, None, None)
        text = tokenizer.decode(input_ids)
        turn = ("<think>found it</think><answer>Oslo</answer>" if text.count("<|im_start|>assistant") >= 2
                else "<think>look it up</think><search>capital of Norway</search>")
        return tokenizer.encode(turn + "<|im_end|>", add_special_tokens=False)

    config = RolloutConfig(n_samples_per_prompt=2, concurrency=2, max_new_tokens_per_turn=64,
                           sampling=SamplingParams(seed=0),
                           env_kwargs={"retriever_url": server.url + "/retrieve", "timeout": 5.0})
    rollout = Rollout(FakeEngine(responder=respond, latency=0.02), template, config)
    rows = [PromptRow(index=i, prompt="-", env_id="agentrl/Search-v0",
                      options={"question": "What is the capital of Norway?", "golden_answers": ["Oslo"]})
            for i in range(4)]
    result = asyncio.run(rollout.generate(PromptSampler(rows, shuffle=False).next_batch, batch_size=4))

    keys = sorted((s.group_id, s.sample_index) for s in result.samples)
    assert keys == [(g, i) for g in range(4) for i in range(2)]  # every group once, none lost
    assert all(s.status == "ok" and s.num_turns == 2 for s in result.samples)
    served = [s for s in result.samples if s.metrics["tool_errors"] == 0]
    failed = [s for s in result.samples if s.metrics["tool_errors"] == 1]
    assert served and failed and len(served) + len(failed) == 8
    assert all("retrieval failed" in s.messages[2]["content"] for s in failed)
    assert all("Oslo" in s.messages[2]["content"] and s.reward == 1.0 for s in served)
    assert result.metrics["rollout/tool_errors_mean"] == len(failed) / 8
