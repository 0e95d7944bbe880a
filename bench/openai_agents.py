"""Agent programs through the OpenAI-compatible endpoint: many concurrent episodes overlap their tool waits.

Every episode is an agent program (:class:`agentrl.env.agent.AgentEnv`) written with the plain
``openai.AsyncOpenAI`` client: it asks the model, gets a tool call back as ``tool_calls``, runs the
tool (``asyncio.sleep(latency)``, 200 ms by default), sends the result, ``T`` times, then gets the
final answer. The episodes run through :class:`agentrl.rollout.Rollout`: they share the endpoint the
rollout starts on 127.0.0.1 in front of its engine, each opens an episode key, and every call is recorded
as token ids. The agents' clients reach the endpoint in process (httpx's ASGI transport, the default)
or, in the "over TCP" row, over a socket. The engine is a :class:`FakeEngine` answering after
``engine_latency`` seconds (0 by default), so the wall time is tool waiting, engine waiting and the
stack's own CPU work (the SDK, HTTP, request parsing, chat-template rendering, token capture).

For ``E`` episodes at concurrency ``C`` (``E <= C``):

* ideal = T * latency + (T + 1) * engine_latency   (what one episode must wait; all of them overlap)
* ratio = wall / ideal                             (1.0: perfect overlap; the target is <= 2.0)

The concurrency-1 row shows the stack's overhead per episode with nothing to overlap.

Usage::

    python bench/openai_agents.py                              # 64 episodes, 3 tool turns, 200 ms
    python bench/openai_agents.py --episodes 64 --turns 3 --latency 0.2 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _report  # noqa: E402

from agentrl.chat import ChatTemplate  # noqa: E402
from agentrl.data.prompts import PromptRow  # noqa: E402
from agentrl.env.agent import register_agent  # noqa: E402
from agentrl.models import load_tokenizer  # noqa: E402
from agentrl.rollout import Rollout, RolloutConfig  # noqa: E402
from agentrl.testing import FakeEngine  # noqa: E402

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a key up.", "parameters": {
    "type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}
CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "k"}}</tool_call><|im_end|>'
ANSWER = "The answer is 42.<|im_end|>"


async def tool_agent(client: Any, task: dict[str, Any]) -> float:
    """A ReAct loop with the plain SDK: call the model, run its tool calls, until it answers."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Find the value (task {task['index']})."}]
    for _ in range(task["turns"] + 2):
        out = await client.chat.completions.create(model="policy", messages=messages, tools=[LOOKUP])
        message = out.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return float("42" in (message.content or ""))
        for call in message.tool_calls:
            await asyncio.sleep(task["latency"])
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "42"})
    return 0.0


@dataclass
class Row:
    case: str
    concurrency: int
    episodes: int
    turns: int
    latency_s: float
    engine_latency_s: float
    wall_s: float
    cpu_s: float
    ideal_s: float
    ratio: float
    overhead_per_episode_ms: float
    """(wall - ideal) per episode at concurrency 1; per wave otherwise."""
    calls: int
    ok: int


def engine_for(template: ChatTemplate, turns: int, latency: float) -> FakeEngine:
    tok = template.tokenizer
    call, answer = tok.encode(CALL, add_special_tokens=False), tok.encode(ANSWER, add_special_tokens=False)
    tool_turn = tok.encode("<|im_start|>tool", add_special_tokens=False)

    def responder(ids: list[int], sampling: Any) -> list[int]:
        done = sum(ids[i:i + len(tool_turn)] == tool_turn for i in range(len(ids) - len(tool_turn) + 1))
        return call if done < turns else answer

    return FakeEngine(responder=responder, latency=latency)


async def run_case(case: str, template: ChatTemplate, episodes: int, concurrency: int, turns: int, latency: float,
                   engine_latency: float, env_id: str = "agentrl/BenchToolAgent-v0") -> Row:
    engine = engine_for(template, turns, engine_latency)
    config = RolloutConfig(n_samples_per_prompt=1, concurrency=concurrency, max_context_tokens=8192,
                           episode_timeout=600)
    rollout = Rollout(engine, template, config, default_env_id=env_id)
    rows = [PromptRow(index=i, prompt=None, options={"index": i, "turns": turns, "latency": latency})
            for i in range(episodes)]
    start, cpu = time.perf_counter(), time.process_time()
    result = await rollout.generate(lambda n: [rows.pop(0) for _ in range(min(n, len(rows)))], batch_size=episodes)
    wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    samples = [s for g in result.finished for s in g.samples]
    for s in samples:
        if s.status != "ok":
            logging.warning("episode %s: %s", s.status, s.error)
    ok = sum(s.status == "ok" and s.reward == 1.0 and s.num_turns == turns + 1 for s in samples)
    waves = -(-episodes // concurrency)
    ideal = waves * (turns * latency + (turns + 1) * engine_latency)
    return Row(case, concurrency, episodes, turns, latency, engine_latency, wall, cpu_s, ideal,
               wall / ideal if ideal else float("nan"), 1000 * (wall - ideal) / (episodes if concurrency == 1 else waves),
               len(engine.requests), ok)


def machine() -> str:
    load = f", 1-minute load average {os.getloadavg()[0]:.2f} before the run" if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}, cpu, {platform.system()} {platform.release()}{load}); "
            f"Python {platform.python_version()}")


def table(rows: list[Row]) -> str:
    head = ["case", "concurrency", "episodes", "tool turns", "tool latency s", "engine latency s", "wall s", "cpu s",
            "ideal s", "ratio wall/ideal", "overhead ms", "model calls", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r.case} | {r.concurrency} | {r.episodes} | {r.turns} | {r.latency_s:g} | {r.engine_latency_s:g} "
                     f"| {r.wall_s:.2f} | {r.cpu_s:.2f} | {r.ideal_s:.2f} | {r.ratio:.2f} | "
                     f"{r.overhead_per_episode_ms:.0f} | {r.calls} | {r.ok}/{r.episodes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=64, help="concurrent episodes (and the concurrency)")
    p.add_argument("--turns", type=int, default=3, help="tool turns per episode")
    p.add_argument("--latency", type=float, default=0.2, help="seconds each tool call waits")
    p.add_argument("--engine-latency", type=float, default=0.0, help="seconds each model call waits")
    p.add_argument("--baseline-episodes", type=int, default=4, help="episodes of the concurrency-1 row")
    p.add_argument("--out", type=Path, default=None, help="write openai_agents_<tag>.json/.md here")
    p.add_argument("--tag", default="cpu", help="file name tag of the results")
    p.add_argument("--tokenizer", default="tiny-qwen2", help="a ChatML tokenizer (alias or folder; default SmolLM2's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("agentrl.chat.template").setLevel(logging.ERROR)  # SmolLM2's template ignores tools=
    host = machine()
    register_agent("BenchToolAgent-v0", tool_agent)
    register_agent("BenchToolAgentTCP-v0", tool_agent, in_process=False)
    template = ChatTemplate(load_tokenizer(args.tokenizer))
    asyncio.run(run_case("warm-up", template, 2, 2, 1, 0.0, 0.0))
    rows = [asyncio.run(run_case("concurrent", template, args.episodes, args.episodes, args.turns, args.latency,
                                 args.engine_latency)),
            asyncio.run(run_case("concurrent, over TCP", template, args.episodes, args.episodes, args.turns,
                                 args.latency, args.engine_latency, env_id="agentrl/BenchToolAgentTCP-v0")),
            asyncio.run(run_case("one at a time", template, args.baseline_episodes, 1, args.turns, args.latency,
                                 args.engine_latency))]
    text = table(rows)
    print(text)
    passed = rows[0].ratio <= 2.0 and all(r.ok == r.episodes for r in rows)  # the default path: in process
    print(f"\n{'PASS' if passed else 'FAIL'}: {args.episodes} concurrent episodes in {rows[0].ratio:.2f}x the ideal wall "
          "time (target <= 2x)")
    if args.out:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        command = " ".join(["python", *sys.argv])
        record = {"commit": _report.commit(), "machine": host, "date": stamp, "command": command,
                  "passed": passed, "rows": [asdict(r) for r in rows]}
        md = (f"# Agent programs through the OpenAI endpoint ({args.tag})\n\n- commit: {record['commit']}\n"
              f"- machine: {host}\n- date: {stamp}\n- command: `{command}`\n\n{text}\n\n"
              f"{'PASS' if passed else 'FAIL'}: {rows[0].ratio:.2f}x the ideal wall time (target <= 2x).\n\n"
              "ideal = tool turns x tool latency + model calls x engine latency (one episode's waits; concurrent "
              "episodes overlap them). Overhead = wall - ideal, per episode at concurrency 1, per wave otherwise. "
              "The episodes share the rollout's endpoint and call it with the openai SDK, in process (httpx's ASGI "
              "transport, the default) or over TCP (uvicorn on 127.0.0.1); every call is recorded as token ids. The "
              "target applies to the default path.\n")
        path = _report.save(args.out, f"openai_agents_{args.tag}", record, md)
        print(f"wrote {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
