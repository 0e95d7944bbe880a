"""Rollout concurrency: many episodes waiting on slow tools overlap their waits.

Every episode of ``agentrl/ToolUse-v0`` makes one tool call per turn for ``T`` turns, each call
waiting ``latency`` seconds (200 ms by default), then answers; a :class:`FakeEngine` answers
instantly, so the wall time is tool waiting plus the rollout's own CPU work (chat-template
rendering, env creation, parsing). The episodes run through :class:`agentrl.rollout.Rollout`.

For ``E`` episodes at concurrency ``C``:

* ideal  = ceil(E / C) * T * latency   (every wave of C episodes waits once per turn)
* serial = E * T * latency             (one tool call at a time)
* ratio  = wall / ideal                (1.0: the waits overlap perfectly; C when nothing overlaps)

Cases: an async tool (``asyncio.sleep``); a sync tool (``time.sleep``) on ToolUseEnv's private
thread pool (the default); the same sync tool on asyncio's shared default executor
(``tool_threads=0``), whose ``min(32, cpu_count + 4)`` threads serialise 64 concurrent calls on a
small machine; concurrency 1 as the baseline; and latency 0, which shows the rollout's own
overhead per episode.

Usage::

    python bench/rollout_concurrency.py                      # 64 episodes, 3 turns, 200 ms
    python bench/rollout_concurrency.py --turns 1 3 --episodes 64 --latency 0.2 --out bench/results
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentrl.chat import ChatTemplate  # noqa: E402
from agentrl.data.prompts import PromptRow  # noqa: E402
from agentrl.models import load_tokenizer  # noqa: E402
from agentrl.rollout import Rollout, RolloutConfig  # noqa: E402
from agentrl.testing import FakeEngine  # noqa: E402

log = logging.getLogger("bench.rollout_concurrency")


def make_tool(kind: str):
    """A tool named ``wait`` that waits ``seconds``: blocking (``sync``) or on the loop (``async``)."""
    if kind == "sync":
        def wait(seconds: float) -> str:
            """Wait, blocking the calling thread (a stand-in for a slow sync tool).

            Args:
                seconds: How long to wait.
            """
            time.sleep(seconds)
            return "done"
    else:
        async def wait(seconds: float) -> str:  # type: ignore[misc]
            """Wait without blocking the event loop (a stand-in for a slow async tool).

            Args:
                seconds: How long to wait.
            """
            await asyncio.sleep(seconds)
            return "done"
    return wait


@dataclass
class Case:
    name: str
    tool: str
    """``async`` or ``sync``."""
    tool_threads: int | None
    """ToolUseEnv's ``tool_threads`` (None: a private pool; 0: asyncio's default executor)."""
    concurrency: int
    episodes: int
    turns: int
    latency: float


@dataclass
class Row:
    case: str
    tool: str
    concurrency: int
    episodes: int
    turns: int
    latency_s: float
    wall_s: float
    cpu_s: float
    """CPU time of this process (every thread) during the case."""
    ideal_s: float
    serial_s: float
    ratio: float | None
    overhead_per_episode_ms: float
    ok: int


def scripted_engine(template: ChatTemplate, turns: int, latency: float) -> FakeEngine:
    """An instant engine: ``turns`` tool-call turns, then the answer."""
    tok = template.tokenizer
    call = json.dumps({"name": "wait", "arguments": {"seconds": latency}})
    call_ids = tok.encode(f"<tool_call>\n{call}\n</tool_call><|im_end|>", add_special_tokens=False)
    answer_ids = tok.encode("\\boxed{391}<|im_end|>", add_special_tokens=False)
    im_start = tok.convert_tokens_to_ids("<|im_start|>")

    def respond(input_ids: list[int], sampling: Any) -> list[int]:
        # opening = system, user, assistant prompt; each tool turn adds a tool and an assistant header
        turn = (input_ids.count(im_start) - 3) // 2
        return call_ids if turn < turns else answer_ids

    return FakeEngine(responder=respond)


async def run_case(case: Case, template: ChatTemplate) -> Row:
    tool = make_tool(case.tool)
    config = RolloutConfig(
        n_samples_per_prompt=1, concurrency=case.concurrency, max_turns=case.turns + 1, episode_timeout=None,
        max_context_tokens=8192, env_kwargs={"tools": [tool], "tool_threads": case.tool_threads,
                                             "tool_timeout": 60.0},
    )
    rollout = Rollout(scripted_engine(template, case.turns, case.latency), template, config,
                      default_env_id="agentrl/ToolUse-v0", filters=())
    rows = [PromptRow(index=i, prompt=f"What is 17 * 23? (#{i})", label="391") for i in range(case.episodes)]

    def next_rows(n: int) -> list[PromptRow]:
        taken, rows[:] = rows[:n], rows[n:]
        return taken

    start, cpu_start = time.perf_counter(), time.process_time()
    result = await rollout.generate(next_rows, batch_size=case.episodes)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    samples = result.samples

    def expected(s: Any) -> bool:
        return s.status == "ok" and s.reward == 1.0 and s.metrics.get("tool_calls") == case.turns

    ok = sum(map(expected, samples))
    if ok != case.episodes:
        bad = next((s for s in samples if not expected(s)), None)
        log.warning("%s: %d of %d episodes as expected; e.g. %s", case.name, ok, case.episodes,
                    bad and (bad.status, bad.error, bad.metrics.get("tool_calls")))
    waves = math.ceil(case.episodes / case.concurrency)
    ideal = waves * case.turns * case.latency
    serial = case.episodes * case.turns * case.latency
    return Row(case.name, case.tool, case.concurrency, case.episodes, case.turns, case.latency, round(wall, 3),
               round(cpu, 3), round(ideal, 3), round(serial, 3), round(wall / ideal, 3) if ideal else None,
               round(1000 * (wall - ideal) / case.episodes, 2), ok)


def cases(episodes: int, turns_list: list[int], latency: float, baseline_episodes: int) -> list[Case]:
    out = []
    for t in turns_list:
        out += [
            Case("async tool", "async", None, episodes, episodes, t, latency),
            Case("sync tool, env thread pool", "sync", None, episodes, episodes, t, latency),
            Case("sync tool, asyncio default executor", "sync", 0, episodes, episodes, t, latency),
            Case("async tool, concurrency 1 (baseline)", "async", None, 1, baseline_episodes, t, latency),
            Case("no tool latency (rollout overhead)", "async", None, episodes, episodes, t, 0.0),
        ]
    return out


NOTES = """\
How to read it: `ideal` = ceil(episodes / concurrency) x turns x latency, `serial` = episodes x
turns x latency, `ratio` = wall / ideal (1.0: every wait overlapped; equal to the concurrency when
none did). `overhead ms/episode` = (wall - ideal) / episodes: the rollout's own work (env
creation, chat-template rendering, parsing), which runs on the one event-loop thread; with every
episode in lockstep it adds to the waiting instead of hiding behind it. The `no tool latency` row
measures it alone. `cpu s` is this process's CPU time in the case: where the wall time exceeds
ideal + cpu, the process was waiting for a core (other load on the machine). The `asyncio default
executor` row runs the sync tool with `ToolUseEnv(tool_threads=0)`: 64 blocking calls share that
executor's min(32, cpus + 4) threads.
"""


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "python": platform.python_version(),
            "default_executor_threads": min(32, (os.cpu_count() or 1) + 4),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def table(rows: list[Row]) -> str:
    head = ["case", "concurrency", "episodes", "turns", "latency s", "wall s", "cpu s", "ideal s", "serial s",
            "ratio wall/ideal", "speed-up vs serial", "overhead ms/episode", "ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        speedup = f"{r.serial_s / r.wall_s:.1f}x" if r.serial_s else "-"
        lines.append(f"| {r.case} | {r.concurrency} | {r.episodes} | {r.turns} | {r.latency_s:g} | {r.wall_s:.2f} | {r.cpu_s:.2f} | "
                     f"{r.ideal_s:.2f} | {r.serial_s:.2f} | {ratio} | {speedup} | {r.overhead_per_episode_ms:.1f} | "
                     f"{r.ok}/{r.episodes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=64, help="episodes per case (and the concurrency)")
    p.add_argument("--turns", type=int, nargs="+", default=[3], help="tool turns per episode (several values: rows for each)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds each tool call waits")
    p.add_argument("--baseline-episodes", type=int, default=4, help="episodes of the concurrency-1 baseline")
    p.add_argument("--out", type=Path, default=None, help="write rollout_concurrency_<tag>.json/.md here")
    p.add_argument("--tag", default="cpu", help="file name tag of the results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = machine()  # the load average before this run adds its own
    template = ChatTemplate(load_tokenizer("tiny-qwen2"))  # SmolLM2's ChatML tokenizer
    quiet = logging.getLogger("agentrl.chat.template")  # SmolLM2's template ignores tools=: expected here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        asyncio.run(run_case(Case("warm-up", "async", None, 4, 4, 1, 0.0), template))
        rows = [asyncio.run(run_case(c, template))
                for c in cases(args.episodes, args.turns, args.latency, args.baseline_episodes)]
    finally:
        quiet.setLevel(level)
    text = table(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record = {"date": stamp, "machine": host, "command": " ".join(["python", *sys.argv]),
                  "latency_s": args.latency, "rows": [asdict(r) for r in rows]}
        (args.out / f"rollout_concurrency_{args.tag}.json").write_text(json.dumps(record, indent=2) + "\n")
        md = (f"# Rollout concurrency ({args.tag})\n\n{stamp}; {host['cpu_count']} CPU cores ({host['processor']}, "
              f"1-minute load average {host['load_average_1min']} before the run); Python {host['python']}; "
              f"`{record['command']}`\n\n{text}\n\n{NOTES}")
        (args.out / f"rollout_concurrency_{args.tag}.md").write_text(md)
    return 0 if all(r.ok == r.episodes for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
