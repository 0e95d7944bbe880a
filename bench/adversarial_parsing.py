"""Adversarial model replies: how long the tool-call parsers and every built-in environment hold
the event loop on a 1 MB reply.

Model output is untrusted input, produced by the thousands in RL, degenerate text included. Each
case below is one reply of 1 MiB characters (nested brackets and ``\\boxed{``, unclosed tags and
JSON, whitespace padding after an unclosed code fence, thousands of well-formed calls or tags)
plus a short power tower that a symbolic checker could chew on forever. For each parser the
table gives the time of one ``parse`` (it runs on the caller's thread, so all of it is event-loop
time); for each environment it runs ``await env.astep(reply)`` after ``reset`` on an event loop
with a heartbeat task ticking every millisecond, and reports

* ``loop ms``: the longest stretch the event loop could not run the heartbeat (the step's
  event-loop time where it runs inline; a step that parses or grades in a worker thread leaves
  the loop free except for the GIL hand-over, ``sys.getswitchinterval()`` = 5 ms at a time);
* ``wall ms``: the step's wall time.

Each case runs ``--repeats`` times (3): ``loop ms`` is the smallest (other processes on a shared
machine only ever add to it), ``wall ms`` the median.

The bound asked of every row is ``loop ms < 100``.

Usage::

    python bench/adversarial_parsing.py                      # every case, table on stdout
    python bench/adversarial_parsing.py --out bench/results  # also adversarial_parsing_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import save  # noqa: E402

MIB = 1 << 20
BOUND_MS = 100.0
ENVS = ("Math-v0", "GSM8K-v0", "ReasoningGym-v0", "Search-v0", "ToolUse-v0", "FrozenLake-v0", "Taxi-v0",
        "Blackjack-v0", "CliffWalking-v0", "Echo-v0")


def _fill(unit: str, size: int = MIB) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def replies() -> dict[str, str]:
    """Name -> reply: 1 MiB each, but the last (a short reply that is slow to check symbolically)."""
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>\n'
    return {
        "nested JSON in a call": "<tool_call>" + _fill('{"a": [', MIB - 11),
        "nested brackets": _fill("[{("),
        "nested \\boxed{": _fill("\\boxed{"),
        "unclosed calls": _fill('<tool_call>{"name": "'),
        "unclosed tags": _fill("<search><answer><action><think>"),
        "fence + whitespace": "<tool_call>```json" + " " * (MIB - 30) + "</tool_call>",
        "unclosed fence + whitespace": "<tool_call>```" + _fill(" \n", MIB - 14),
        "whitespace": _fill(" \n\t"),
        "many tool calls": _fill(call),
        "many tags": _fill("<search>q</search> <answer>a</answer> <action>up</action> \\boxed{1} "),
        "many numbers": _fill("1 "),
        "near-miss words": _fill("upx xdown searchx <answerx> "),
        "power tower (short)": "\\boxed{9^{9^{9^{9}}}} <answer>9**9**9**9</answer>",
    }


def time_parsers(cases: dict[str, str], repeats: int) -> list[dict[str, Any]]:
    from agentrl.tool import HermesParser, TagParser

    parsers = {"HermesParser": HermesParser(), "TagParser(search, python)": TagParser(("search", "python"))}
    rows = []
    for target, parser in parsers.items():
        for kind, text in cases.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                calls = parser.parse(text)
                times.append((time.perf_counter() - start) * 1000)
            ms = min(times)
            rows.append({"target": target, "input": kind, "chars": len(text), "loop_ms": ms, "wall_ms": ms,
                         "result": f"{len(calls)} calls"})
    return rows


async def _step_with_heartbeat(env: Any, reply: str) -> tuple[float, float, Any]:
    """(longest event-loop stall in ms, wall ms, step result) of ``env.astep(reply)``."""
    longest = 0.0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    beat = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(0.005)  # the heartbeat is running before the step starts
    start = time.perf_counter()
    result = await env.astep(reply)
    wall = time.perf_counter() - start
    stop.set()
    await beat
    return longest * 1000, wall * 1000, result


def time_envs(cases: dict[str, str], env_ids: tuple[str, ...], repeats: int) -> list[dict[str, Any]]:
    from agentrl.env import make

    rows = []
    for env_id in env_ids:
        env = make(env_id)
        for kind, text in cases.items():
            async def one(env: Any, text: str) -> list[tuple[float, float, Any]]:
                await env.areset(seed=0)
                await env.astep("warm-up")  # a first step pays for imports and worker start-up
                runs = []
                for _ in range(repeats):
                    await env.areset(seed=0)
                    runs.append(await _step_with_heartbeat(env, text))
                return runs

            runs = asyncio.run(one(env, text))
            loop_ms = min(r[0] for r in runs)  # the other processes of a shared machine only add to it
            wall_ms = sorted(r[1] for r in runs)[len(runs) // 2]
            _, reward, terminated, truncated, info = runs[-1][2]
            note = info.get("error") or info.get("tool_error_kinds") or info.get("action") or info.get("method") or ""
            rows.append({"target": env_id, "input": kind, "chars": len(text), "loop_ms": loop_ms, "wall_ms": wall_ms,
                         "result": f"reward {float(reward):g}{', done' if terminated or truncated else ''}"
                                   + (f"; {str(note)[:60]}" if note else "")})
        env.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | input | chars | loop ms | wall ms | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r["loop_ms"] < BOUND_MS else " **over**"
        result = r["result"].replace("|", "\\|")
        lines.append(f"| {r['target']} | {r['input']} | {r['chars']:,} | {r['loop_ms']:.1f}{flag} | {r['wall_ms']:.1f} "
                     f"| {result} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), help="environment ids to step (default: every built-in)")
    p.add_argument("--inputs", nargs="+", default=None, help="input names to use (default: all)")
    p.add_argument("--repeats", type=int, default=3,
                   help="steps per case: the smallest loop time and the median wall time are reported")
    p.add_argument("--out", type=Path, default=None, help="write adversarial_parsing_<tag>.json/.md here")
    p.add_argument("--tag", default="cpu", help="file name tag of the results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    os.environ.pop("AGENTRL_RETRIEVER_URL", None)  # Search-v0 searches its in-process mini corpus
    host = machine()
    cases = {k: v for k, v in replies().items() if args.inputs is None or k in args.inputs}
    rows = time_parsers(cases, args.repeats) + time_envs(cases, tuple(args.envs), args.repeats)
    text = table(rows)
    print(text)
    worst = max(rows, key=lambda r: r["loop_ms"])
    print(f"\nlongest event-loop time: {worst['loop_ms']:.1f} ms ({worst['target']}, {worst['input']}); "
          f"bound {BOUND_MS:g} ms")
    if args.out:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        command = " ".join(["python", "bench/adversarial_parsing.py", *(argv if argv is not None else sys.argv[1:])])
        meta = {"date": stamp, "commit": commit(), "machine": host, "command": command, "bound_ms": BOUND_MS}
        md = (f"# Adversarial replies: event-loop time of the parsers and environments ({args.tag})\n\n"
              f"{stamp}; commit {meta['commit']}; {host['cpu_count']} CPU cores ({host['processor']}, 1-minute load "
              f"average {host['load_average_1min']} before the run); Python {host['python']}; `{command}`\n\n"
              f"{text}\n\n{__doc__.split(chr(10) + chr(10), 1)[1].split('Usage::')[0].strip()}\n")
        save(args.out, f"adversarial_parsing_{args.tag}", {"meta": meta, "rows": rows}, md)
    return 0 if worst["loop_ms"] < BOUND_MS else 1


if __name__ == "__main__":
    sys.exit(main())
