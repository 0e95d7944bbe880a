"""Where a multi-turn rollout's time goes in the embedded engine (no trainer).

Runs the async benchmark's workload (``bench/async_speedup.py``: episodes of ``--turns`` turns with
Pareto-distributed lengths and simulated tool answers) directly against an :class:`EmbeddedEngine`,
``--rollouts`` times, and splits each rollout's wall time into the engine worker's prefills,
decode steps and bookkeeping, and the time it sat idle (waiting for episodes to send their next
turn). Decode steps are also grouped by batch size, with their mean time, so a slow step shape
stands out. ``--profile`` adds a ``torch.profiler`` table of the last rollout.

Two ratios say how close a rollout comes to pure decoding: ``prefill_share``, the admission steps'
time over the wall time (with mixed steps, ``--mixed-prefill``, an admission step also decodes the
running rows, and all of its time counts here), and ``wall_over_floor``, the wall time over the
*decode floor*: the rollout's decode steps (mixed ones included) times the median time of a
decode step. ``prefill_extra_s`` is the admission steps' time beyond one median decode step each.

Steps overlap (the next is launched before the last one's tokens are read), so a step's time is
the engine's own account (``stats.prefill_s`` and ``stats.decode_s``): from the moment the previous
step's tokens reached the host to the moment its own did, and for an admission also the host time
spent preparing it while the step before it ran. (Before admissions were pipelined, this benchmark
timed the scheduler's ``_admit`` and ``_decode`` calls, bookkeeping included.)

    python bench/engine_multiturn.py --shape qwen2.5-0.5b --out bench/results             # GPU
    python bench/engine_multiturn.py --shape tiny --batch 2 --samples 2 --max-len 128     # CPU smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._report import device_tag, save  # noqa: E402


class StepClock:
    """Wraps the scheduler's phases to time them (wall seconds on the worker thread)."""

    def __init__(self, scheduler) -> None:
        from agentrl.engine.embedded.runner import batch_bucket

        self._bucket = batch_bucket
        self.s = scheduler
        self.totals: dict[str, float] = defaultdict(float)
        self.by_batch: dict[int, list[float]] = defaultdict(lambda: [0, 0.0])  # bucket -> [steps, seconds]
        self.durations: dict[str, list[float]] = defaultdict(list)  # per call of _decode / _admit
        self.mixed_decodes = 0  # admission steps that decoded the running rows too
        for name in ("_admit", "_decode", "_compact", "_run_commands"):
            self._wrap(name)

    def _wrap(self, name: str) -> None:
        inner = getattr(self.s, name)

        def timed(*args, **kwargs):
            n = self.s.n
            t0 = time.perf_counter()
            result = None
            try:
                result = inner(*args, **kwargs)
                return result
            finally:
                dt = time.perf_counter() - t0
                self.totals[name] += dt
                if name in ("_decode", "_admit"):
                    self.durations[name].append(dt)
                if name == "_admit" and result is True and n:
                    self.mixed_decodes += 1
                if name == "_decode":
                    entry = self.by_batch[self._bucket(n, self.s.max_slots)]
                    entry[0] += 1
                    entry[1] += dt

        setattr(self.s, name, timed)

    def reset(self) -> None:
        self.totals.clear()
        self.by_batch.clear()
        self.durations.clear()
        self.mixed_decodes = 0


async def one_rollout(engine, args, workload: dict, rollout: int) -> float:
    from async_speedup import long_tail_episode

    config = SimpleNamespace(env_kwargs=workload, max_context_tokens=engine.config.max_seq_len)
    requests = [SimpleNamespace(sampling_seed=rollout * 100_000 + i, group_id=rollout * 1000 + i // args.samples,
                                sample_index=i % args.samples, env_seed=rollout * 1000 + i // args.samples, env_id=0)
                for i in range(args.batch * args.samples)]
    start = time.perf_counter()
    samples = await asyncio.gather(*(long_tail_episode(engine, None, r, config) for r in requests))
    wall = time.perf_counter() - start
    bad = [s.status for s in samples if s.status != "ok"]
    if bad:
        sys.exit(f"{len(bad)} episode(s) did not finish: {sorted(set(bad))}")
    return wall


async def run(args) -> dict:
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.models import load_tokenizer
    from agentrl.testing.tiny import BENCH_SHAPES, make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="agentrl-multiturn-"))
    shape = {} if args.shape == "tiny" else BENCH_SHAPES[args.shape]
    model_dir = make_tiny_model(work / "model", "qwen2", tokenizer=args.tokenizer, **shape)
    vocab = len(load_tokenizer(str(model_dir)))
    workload = {"vocab": vocab, "prompt_len": args.prompt_len, "turns": args.turns, "obs_len": args.obs_len,
                "min_len": args.min_len, "max_len": args.max_len, "tail_alpha": args.tail_alpha}
    context = args.prompt_len + args.turns * (args.max_len + args.obs_len)
    options = {} if args.prefix_cache == "auto" else {"prefix_cache": args.prefix_cache == "on"}
    if args.mixed_prefill != "auto":  # (an engine without mixed steps runs only with "auto")
        options["mixed_prefill"] = args.mixed_prefill == "on"
    if args.prefill_token_budget is not None:
        options["prefill_token_budget"] = args.prefill_token_budget
    if args.admit_ahead:
        options["admit_ahead"] = True
    engine = EmbeddedEngine(str(model_dir), device=args.device, max_batch_size=args.batch * args.samples,
                            max_seq_len=context, admit_wait_steps=args.admit_wait_steps, **options)
    clock = StepClock(engine._scheduler)
    rows = []
    async with engine:
        for r in range(args.rollouts):
            clock.reset()
            st0 = dict(vars(engine.stats))
            profile = args.profile and r == args.rollouts - 1
            prof = None
            if profile:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                prof = torch.profiler.profile(activities=acts)  # started on the worker, which runs the ops
                await asyncio.wrap_future(engine._scheduler.call(prof.__enter__))
            wall = await one_rollout(engine, args, workload, r)
            st = {k: v - st0[k] for k, v in vars(engine.stats).items()}
            if prof is not None:
                await asyncio.wrap_future(engine._scheduler.call(functools.partial(prof.__exit__, None, None, None)))
            t = clock.totals
            steps = st["steps"]
            step_ms = 1e3 * statistics.median(clock.durations["_decode"]) if clock.durations["_decode"] else float("nan")
            floor = steps * step_ms / 1e3
            row = {"rollout": r, "wall_s": wall, "busy_s": st["busy_s"], "idle_s": wall - st["busy_s"],
                   "prefill_s": st["prefill_s"], "decode_s": st["decode_s"], "compact_s": t["_compact"],
                   "commands_s": t["_run_commands"], "prefills": st["prefills"],
                   "prefill_tokens": st["prompt_tokens"] - st["cached_prompt_tokens"],
                   "cached_tokens": st["cached_prompt_tokens"], "decode_steps": steps,
                   "eager_steps": steps - st["graph_steps"], "graphs_captured": engine.stats.graphs_captured,
                   "generated_tokens": st["generated_tokens"],
                   "mean_batch": st["generated_tokens"] / max(steps, 1),
                   "ms_per_step": 1e3 * t["_decode"] / max(steps, 1), "median_step_ms": step_ms,
                   "decode_floor_s": floor, "wall_over_floor": wall / floor if floor else float("nan"),
                   "prefill_share": st["prefill_s"] / wall,
                   "prefill_extra_s": st["prefill_s"] - clock.mixed_decodes * step_ms / 1e3,
                   "mixed_decode_steps": clock.mixed_decodes,
                   "admit_ms": [round(1e3 * x, 2) for x in clock.durations["_admit"]],
                   "by_batch": {b: {"steps": n, "ms": 1e3 * s / n} for b, (n, s) in sorted(clock.by_batch.items())}}
            rows.append(row)
            print(f"rollout {r}: {wall:.2f} s, decode {row['decode_s']:.2f} s over {steps} steps "
                  f"({row['ms_per_step']:.2f} ms/step, median {step_ms:.2f}, mean batch {row['mean_batch']:.1f}), prefill "
                  f"{row['prefill_s']:.2f} s ({100 * row['prefill_share']:.1f}% of the wall time, {row['prefills']} "
                  f"steps), idle {row['idle_s']:.2f} s; decode floor {floor:.2f} s, wall / floor "
                  f"{row['wall_over_floor']:.2f}", flush=True)
            if prof is not None:
                key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
                row["profile"] = prof.key_averages().table(sort_by=key, row_limit=25)
                row["profile_cpu"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
                print(row["profile"])
                print(row["profile_cpu"])
    return {"workload": workload, "rollouts": rows, "engine": {k: str(v) for k, v in vars(engine.config).items()}}


def markdown(result: dict, meta: dict) -> str:
    w = result["workload"]
    cols = ["rollout", "wall_s", "decode_s", "prefill_s", "prefill_share", "prefill_extra_s", "compact_s", "idle_s",
            "decode_steps", "median_step_ms", "decode_floor_s", "wall_over_floor", "ms_per_step", "mean_batch",
            "prefills", "mixed_decode_steps", "prefill_tokens", "cached_tokens", "eager_steps", "graphs_captured"]
    lines = [f"# Engine time in a multi-turn rollout ({meta['device']})\n",
             f"{meta['date']}; torch {meta['torch']}; shape {meta['shape']} (random weights); "
             f"{meta['episodes']} episodes, {w['turns']} turns each, turn lengths Pareto(alpha={w['tail_alpha']}, "
             f"min {w['min_len']}) capped at {w['max_len']}, {w['obs_len']}-token tool answers; engine only.\n",
             f"`{meta['command']}`\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rollouts"]:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    last = result["rollouts"][-1]
    lines += ["", "Decode steps of the last rollout by batch bucket (steps, mean ms):", "",
              "| batch | steps | ms/step |", "|---:|---:|---:|"]
    lines += [f"| {b} | {v['steps']} | {v['ms']:.2f} |" for b, v in last["by_batch"].items()]
    lines.append("\nidle: wall time the worker waited for requests (episodes between turns). prefill_s: admission "
                 "steps (with mixed steps they decode the running rows too; a step's time runs from the last step's "
                 "tokens reaching the host to its own, and an admission's also holds its preparation); prefill_share: prefill_s / wall_s; "
                 "prefill_extra_s: prefill_s less one median decode step per mixed step; decode_floor_s: decode "
                 "steps (mixed included) x median_step_ms; wall_over_floor: wall_s / decode_floor_s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a key of agentrl.testing.tiny.BENCH_SHAPES, or 'tiny'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, via its alias)")
    p.add_argument("--device", default=None, help="engine device (default: cuda if available, else cpu)")
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--batch", type=int, default=32, help="prompts per rollout")
    p.add_argument("--samples", type=int, default=8, help="episodes per prompt")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--obs-len", type=int, default=32)
    p.add_argument("--min-len", type=int, default=24)
    p.add_argument("--max-len", type=int, default=768)
    p.add_argument("--tail-alpha", type=float, default=1.2)
    p.add_argument("--prefix-cache", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--admit-wait-steps", type=int, default=None,
                   help="decode steps a new turn may wait so that several share one prefill "
                        "(0: at once; default: the engine's, 8 on CUDA and 0 on the CPU)")
    p.add_argument("--mixed-prefill", choices=["auto", "on", "off"], default="auto",
                   help="prefill inside decode steps (auto: the engine's default, on for CUDA)")
    p.add_argument("--prefill-token-budget", type=int, default=None, help="prompt tokens per engine step")
    p.add_argument("--admit-ahead", action="store_true",
                   help="launch admission steps over the decode step in flight (EngineConfig.admit_ahead)")
    p.add_argument("--tag", default="", help="suffix of the result files' names")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables of the last rollout")
    p.add_argument("--out", default=None, help="folder for engine_multiturn_<device>.json/.md")
    args = p.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    result = asyncio.run(run(args))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": name,
            "torch": torch.__version__, "shape": args.shape, "episodes": args.batch * args.samples,
            "command": "python " + " ".join(sys.argv)}
    md = markdown(result, meta)
    print(md)
    if args.out:
        save(args.out, f"engine_multiturn_{device_tag(name)}{args.tag}", {"meta": meta, **result}, md)


if __name__ == "__main__":
    main()
