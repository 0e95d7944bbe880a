"""Where an admission step's time goes: ``bench/engine_multiturn.py`` with timers around the engine's parts.

Runs the multi-turn benchmark (same arguments) with wall-clock timers around the scheduler's and
the fast runner's methods (class level: prefix matching, parking, KV moves, the mixed step's launch, the
waits for the GPU), and prints per rollout each one's total (inclusive), calls and mean, then every
mixed step (running rows, prefills, tokens, bucket, graphed, captured, ms) and every decode step
that ran eagerly or captured a graph. ``PROF_TRACE=1`` also records the last rollout with
``torch.profiler`` and writes its kernels and the timed ranges to ``trace_<tag>.json.gz``, whose GPU
busy time per range :func:`busy_by_range` sums. ``PROF_OUT`` (default ``/tmp``) and ``PROF_TAG``
name the outputs. The timers cost a few microseconds a call: the rollouts' wall times read higher
than the plain benchmark's.

    PROF_OUT=/tmp PROF_TAG=new python bench/engine_multiturn_profile.py --rollouts 3 --prefix-cache on
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import engine_multiturn as em  # noqa: E402

from agentrl.engine.embedded import mixed as mx  # noqa: E402
from agentrl.engine.embedded import runner as rn  # noqa: E402
from agentrl.engine.embedded import scheduler as sch  # noqa: E402

TOTALS: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()
STEPS: list[tuple] = []  # mixed steps, and decode steps that ran eagerly or captured
PROFILING = {"on": False}
OUT = Path(os.environ.get("PROF_OUT", "/tmp"))
TAG = os.environ.get("PROF_TAG", "x")
SCHEDULER = ("_admit", "_admit_mixed", "_decode", "_compact", "_settle", "_match", "_shared", "_reuse", "_evict",
             "_place", "_rows", "_record", "_launch", "_collect", "_park", "_complete", "_follow_chunk", "_run_commands")
RUNNER = ("launch_mixed", "launch", "collect", "_capture", "move", "swap")


def timed(owner, name: str, label: str | None = None) -> None:
    inner = getattr(owner, name)
    label = label or f"{owner.__name__}.{name}"

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            if PROFILING["on"]:
                with torch.profiler.record_function(label):
                    return inner(*args, **kwargs)
            return inner(*args, **kwargs)
        finally:
            TOTALS[label] += time.perf_counter() - t0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def install() -> None:
    for name in SCHEDULER:
        timed(sch.Scheduler, name)
    for name in RUNNER:
        timed(rn.FastRunner, name)
    timed(mx, "pack", "mixed.pack")
    timed(torch.cuda.Stream, "synchronize", "Stream.synchronize")  # the mixed step's wait for the GPU
    timed(torch.cuda.Event, "synchronize", "Event.synchronize")  # a decode step's

    mixed = rn.FastRunner.launch_mixed  # (launched: its ms are the host's, up to the launch)

    def mixed_step(self, tokens, positions, parts, rows):
        before, t0 = self.graphs_captured, time.perf_counter()
        result = mixed(self, tokens, positions, parts, rows)
        total = len(positions) + sum(len(p.tokens) for p in parts)
        STEPS.append(("mixed", len(tokens), len(parts), total, mx.token_bucket(total), bool(self.last_step_graphed),
                      self.graphs_captured - before, round(1e3 * (time.perf_counter() - t0), 3)))
        return result

    rn.FastRunner.launch_mixed = mixed_step
    launch = rn.FastRunner.launch

    def decode_step(self, tokens, positions, rows):
        before, t0 = self.graphs_captured, time.perf_counter()
        result = launch(self, tokens, positions, rows)
        if not self.last_step_graphed or self.graphs_captured != before:
            need = int(positions.max()) + 1
            STEPS.append(("decode", len(positions), rn.batch_bucket(len(positions), self.max_slots),
                          rn.length_bucket(need, self.max_seq_len), bool(self.last_step_graphed),
                          self.graphs_captured - before, round(1e3 * (time.perf_counter() - t0), 3)))
        return result

    rn.FastRunner.launch = decode_step

    reset = em.StepClock.reset

    def reset_and_report(clock):  # called before each rollout: report the one before
        reset(clock)
        if TOTALS:
            report(clock.profiled_rollout)
        clock.profiled_rollout = getattr(clock, "profiled_rollout", -1) + 1
        TOTALS.clear()
        CALLS.clear()
        STEPS.clear()

    em.StepClock.reset = reset_and_report
    one_rollout = em.one_rollout

    async def traced_rollout(engine, args, workload, rollout):
        if rollout != args.rollouts - 1 or not os.environ.get("PROF_TRACE"):
            return await one_rollout(engine, args, workload, rollout)
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        prof = torch.profiler.profile(activities=activities)
        await asyncio.wrap_future(engine._scheduler.call(prof.__enter__))  # on the worker, which runs the steps
        PROFILING["on"] = True
        try:
            return await one_rollout(engine, args, workload, rollout)
        finally:
            PROFILING["on"] = False
            await asyncio.wrap_future(engine._scheduler.call(functools.partial(prof.__exit__, None, None, None)))
            write_trace(prof)

    em.one_rollout = traced_rollout


def write_trace(prof) -> None:
    path = f"/tmp/trace_{TAG}.json"
    prof.export_chrome_trace(path)
    events = json.loads(Path(path).read_text())["traceEvents"]
    ours = ("Scheduler.", "FastRunner.", "mixed.", "Stream.", "Event.")
    keep = [{k: e[k] for k in ("name", "cat", "ts", "dur") if k in e} for e in events if e.get("ph") == "X" and (
        e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset", "user_annotation")
        or (e.get("cat") == "cpu_op" and e["name"].startswith(ours)))]
    with gzip.open(OUT / f"trace_{TAG}.json.gz", "wt") as f:
        json.dump(keep, f)
    print("trace events kept", len(keep), flush=True)


def busy_by_range(trace: str, names=("Scheduler._admit", "Scheduler._decode", "FastRunner.launch_mixed")) -> dict:
    """From a trace this script wrote: per timed range, its calls, wall ms and the ms in which a kernel
    or copy ran on the GPU (the union of their intervals inside each call)."""
    events = json.load(gzip.open(trace, "rt"))
    kernels = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e["cat"] in ("kernel", "gpu_memcpy", "gpu_memset"))
    starts = np.array([k[0] for k in kernels])
    ends = np.array([k[1] for k in kernels])

    def busy(t0: float, t1: float) -> float:
        total, cur_s, cur_e = 0.0, 0.0, -1.0
        for s, e in zip(starts[np.searchsorted(ends, t0): np.searchsorted(starts, t1)],
                        ends[np.searchsorted(ends, t0): np.searchsorted(starts, t1)]):
            s, e = max(s, t0), min(e, t1)
            if e <= s:
                continue
            if s > cur_e:
                total += max(cur_e - cur_s, 0.0)
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        return total + max(cur_e - cur_s, 0.0)

    out = {}
    for name in names:
        ranges = sorted({(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == name and e["cat"] != "kernel"})
        out[name] = {"calls": len(ranges), "wall_ms": sum(b - a for a, b in ranges) / 1e3,
                     "gpu_busy_ms": float(sum(busy(a, b) for a, b in ranges)) / 1e3}
    return out


def report(rollout) -> None:
    lines = [f"== {TAG} rollout {rollout} fine timing (inclusive ms total, calls, us/call)"]
    for k, v in sorted(TOTALS.items(), key=lambda kv: -kv[1]):
        lines.append(f"{k:32s} {1e3 * v:9.1f} {CALLS[k]:7d} {1e6 * v / max(CALLS[k], 1):9.1f}")
    mixed = [s for s in STEPS if s[0] == "mixed"]
    dec = [s for s in STEPS if s[0] == "decode"]
    lines.append(f"mixed steps {len(mixed)}: graphed {sum(s[5] for s in mixed)}, captured {sum(s[6] for s in mixed)}, "
                 f"ms total {sum(s[7] for s in mixed):.1f}; of captured/eager "
                 f"{sum(s[7] for s in mixed if s[6] or not s[5]):.1f}")
    lines.append(f"decode eager/capture steps {len(dec)}: captured {sum(s[5] for s in dec)} ms {sum(s[6] for s in dec):.1f}")
    lines.append("mixed (n, parts, tokens, bucket, graphed, captured, ms): " + " ".join(str(s[1:]) for s in mixed))
    lines.append("decode non-graph (n, b, L, graphed, captured, ms): " + " ".join(str(s[1:]) for s in dec))
    text = "\n".join(lines)
    print(text, flush=True)
    with open(OUT / f"prof_{TAG}.txt", "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    install()
    sys.argv = ["engine_multiturn.py"] + sys.argv[1:]
    em.main()
    report("last")
