"""Async training speed-up: step time of sync vs async (staleness 1) GRPO in the same run.

Runs ``agentrl.loop.train`` once per mode on a random model of a real shape (embedded engine +
torch trainer, one process, one GPU), on a workload with long-tailed response lengths:

* each episode has ``--turns`` assistant turns; every turn's length is drawn from a Pareto
  distribution (shape ``--tail-alpha``, minimum ``--min-len``, capped at ``--max-len``) and forced
  with ``ignore_eos``; between turns a simulated tool answer of ``--obs-len`` tokens (mask 0);
* modes: ``sync`` (``--max-staleness 0``), ``async`` (``--max-staleness 1`` with partial rollouts:
  turns in flight at a weight update are aborted and continued under the new weights),
  ``async_drain`` (``--max-staleness 1 --no-partial-rollouts``: the update waits for them) and
  ``async_inflight`` (``--max-staleness 1 --in-flight-weight-updates``: they go on through it).
  Every mode uses ``--use-tis`` so they do the same training work.

Step time is the wall time between consecutive steps, over the steps after ``--warmup``. Prompts and sampling seeds are the same in every mode.

    python bench/async_speedup.py --shape qwen2.5-0.5b --out bench/results                          # GPU
    python bench/async_speedup.py --shape tiny --batch 2 --samples 2 --min-len 48 --max-len 384 --tail-alpha 1.0 \
        --rollouts 6 --warmup 1 --out bench/results                                               # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import device_tag, save  # noqa: E402

MODES = {"sync": ["--max-staleness", "0"], "async": ["--max-staleness", "1", "--partial-rollouts"],
         "async_drain": ["--max-staleness", "1", "--no-partial-rollouts"],
         "async_inflight": ["--max-staleness", "1", "--in-flight-weight-updates"]}


# --- the workload: a custom generate function (--custom-generate-function-path) -------------------

async def long_tail_episode(engine, template, request, config, *, reward_fn=None):
    """A multi-turn episode with heavy-tailed turn lengths; its knobs come from ``--env-kwargs``."""
    from agentrl.engine import SamplingParams
    from agentrl.types import Sample

    kw = config.env_kwargs
    rng = random.Random(request.sampling_seed if request.sampling_seed is not None else request.group_id)
    prompt_rng = random.Random(request.env_seed)
    vocab = int(kw["vocab"])
    prompt = [prompt_rng.randrange(100, vocab) for _ in range(int(kw["prompt_len"]))]
    response, mask, logprobs, versions = [], [], [], []
    status = "ok"
    for turn in range(int(kw["turns"])):
        budget = config.max_context_tokens - len(prompt) - len(response)
        want = min(int(kw["max_len"]), int(kw["min_len"] * rng.paretovariate(kw["tail_alpha"])))
        if budget <= 0:
            status = "truncated"
            break
        sampling = SamplingParams(temperature=1.0, max_new_tokens=min(want, budget), ignore_eos=True,
                                  seed=rng.randrange(2**31))
        c = await engine.generate(prompt + response, sampling, rid=f"g{request.group_id}-s{request.sample_index}-t{turn}")
        if c.finish_reason == "abort":
            status = "aborted"
            break
        response += c.token_ids
        mask += [1] * len(c.token_ids)
        logprobs += c.logprobs
        versions.append(c.weight_version)
        if turn + 1 < int(kw["turns"]):  # a tool answer the model did not write
            obs = [rng.randrange(100, vocab) for _ in range(int(kw["obs_len"]))]
            response += obs
            mask += [0] * len(obs)
            logprobs += [0.0] * len(obs)
    generated = [t for t, m in zip(response, mask) if m]
    reward = sum(1 for t in generated if t % 2 == 0) / max(len(generated), 1)  # varies between episodes
    return Sample(prompt_ids=prompt, response_ids=response, loss_mask=mask, rollout_logprobs=logprobs, reward=reward,
                  status=status, group_id=request.group_id, sample_index=request.sample_index,
                  env_id=request.env_id, num_turns=len(versions), weight_versions=versions,
                  metrics={"turns": float(len(versions))})


# --- the benchmark -----------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a key of agentrl.testing.tiny.BENCH_SHAPES, or 'tiny'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, via its alias)")
    p.add_argument("--modes", default="sync,async,async_drain", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--rollouts", type=int, default=10, help="rollouts per mode (the first --warmup are not timed)")
    p.add_argument("--warmup", type=int, default=2, help="first steps of each mode left out of the timing")
    p.add_argument("--batch", type=int, default=32, help="prompts per rollout")
    p.add_argument("--samples", type=int, default=8, help="episodes per prompt")
    p.add_argument("--turns", type=int, default=3, help="assistant turns per episode")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--obs-len", type=int, default=32, help="tokens of each simulated tool answer")
    p.add_argument("--min-len", type=int, default=24, help="Pareto minimum of a turn's length")
    p.add_argument("--max-len", type=int, default=768, help="cap of a turn's length")
    p.add_argument("--tail-alpha", type=float, default=1.2, help="Pareto shape (smaller: heavier tail)")
    p.add_argument("--max-tokens-per-gpu", type=int, default=16384)
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval for the run (Python's default 0.005 s): how long the trainer "
                        "thread may hold the GIL while the engine thread waits for it")
    p.add_argument("--engine-device", default=None,
                   help="embedded engine's device (e.g. cuda:1: generation on a second GPU); default: the trainer's")
    p.add_argument("--engine-admit-wait-steps", type=int, default=None,
                   help="decode steps a new turn may wait so that several share one prefill "
                        "(0: at once; default: the engine's, 8 on CUDA and 0 on the CPU)")
    p.add_argument("--engine-admit-ahead", action="store_true",
                   help="launch the engine's admission steps over the decode step in flight (EngineConfig.admit_ahead)")
    p.add_argument("--tag", default="", help="suffix of the result files' names")
    p.add_argument("--engine-high-priority-stream", action="store_true",
                   help="run the embedded engine on a CUDA stream of the highest priority (ahead of the trainer)")
    p.add_argument("--next-rollout-at", default=None,
                   help="async modes: --next-rollout-at for the run (default: the loop's); a comma-separated list "
                        "runs each async mode once per value (modes named e.g. async@0.25)")
    p.add_argument("--trainer-sms", type=int, default=None,
                   help="async modes: run the trainer's kernels on this many SMs (a CUDA green context), the "
                        "rest left to the engine's decode steps (default: all SMs)")
    p.add_argument("--prefix-cache", choices=["auto", "on", "off"], default="auto",
                   help="the engine's prefix cache (auto: on for CUDA, off on the CPU)")
    p.add_argument("--out", default=None, help="folder for async_speedup_<device>.json/.md")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    from agentrl.models import load_tokenizer
    from agentrl.testing.tiny import BENCH_SHAPES, make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="agentrl-async-bench-"))
    shape = {} if args.shape == "tiny" else BENCH_SHAPES[args.shape]
    model_dir = make_tiny_model(work / "model", "qwen2", tokenizer=args.tokenizer, **shape)
    vocab = len(load_tokenizer(str(model_dir)))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"p{i}", "label": ""}) + "\n" for i in range(4096)))
    context = args.prompt_len + args.turns * (args.max_len + args.obs_len)
    workload = {"vocab": vocab, "prompt_len": args.prompt_len, "turns": args.turns, "obs_len": args.obs_len,
                "min_len": args.min_len, "max_len": args.max_len, "tail_alpha": args.tail_alpha}
    fractions = [float(f) for f in args.next_rollout_at.split(",")] if args.next_rollout_at else [None]
    runs = [(m, None) for m in modes if m == "sync"] + [
        (m, f) for m in modes if m != "sync" for f in fractions]
    results = {}
    for mode, fraction in runs:
        name = mode if fraction is None or len(fractions) == 1 else f"{mode}@{fraction:g}"
        results[name] = run_mode(mode, args, model_dir, prompts, context, workload, work, fraction, name)
        if not results[name]["generated_tokens"] > 0:  # NaN too: a speed-up of failed episodes means nothing
            sys.exit(f"{name}: no tokens were generated (every episode failed; see the log above)")
        print(f"{name}: {results[name]['step_s']:.2f} s/step", flush=True)
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"{os.cpu_count()}-core {platform.machine()} CPU")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": device,
            "torch": torch.__version__, "shape": args.shape, "episodes_per_rollout": args.batch * args.samples,
            "workload": workload, "rollouts": args.rollouts, "warmup": args.warmup,
            "switch_interval": sys.getswitchinterval(), "engine_device": args.engine_device,
            "engine_admit_wait_steps": args.engine_admit_wait_steps,  # None: the engine's default
            "prefix_cache": args.prefix_cache, "engine_admit_ahead": args.engine_admit_ahead,
            "engine_high_priority_stream": args.engine_high_priority_stream,
            "trainer_sms": args.trainer_sms,  # async modes only; None: all SMs
            "next_rollout_at": args.next_rollout_at,  # async modes only; None: the loop's default
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "command": "python " + " ".join(sys.argv)}
    md = markdown(results, meta)
    print(md)
    if args.out:
        two_gpus = bool(args.engine_device and args.engine_device.startswith("cuda"))
        save(args.out, f"async_speedup_{device_tag(device)}{'_2gpu' if two_gpus else ''}{args.tag}",
             {"meta": meta, "modes": results}, md)


def run_mode(mode: str, args, model_dir: Path, prompts: Path, context: int, workload: dict, work: Path,
             next_rollout_at: float | None = None, name: str | None = None) -> dict:
    from agentrl.config import parse_args
    from agentrl.loop import train

    out = work / (name or mode)
    episodes = args.batch * args.samples
    cfg = parse_args([
        "--model-path", str(model_dir), "--env", "agentrl/Echo-v0", "--prompt-data", str(prompts),
        "--custom-generate-function-path", f"{Path(__file__).resolve()}:long_tail_episode",
        "--env-kwargs", json.dumps(workload), "--num-rollout", str(args.rollouts),
        "--rollout-batch-size", str(args.batch), "--n-samples-per-prompt", str(args.samples),
        "--rollout-max-response-len", str(args.max_len), "--rollout-max-context-len", str(context),
        "--rollout-concurrency", str(episodes), "--engine-max-batch-size", str(episodes),
        "--max-tokens-per-gpu", str(args.max_tokens_per_gpu), "--use-tis", "--lr", "1e-6",
        "--output-dir", str(out), *MODES[mode],
        *(["--engine-device", args.engine_device] if args.engine_device else []),
        *(["--engine-admit-wait-steps", str(args.engine_admit_wait_steps)]
          if args.engine_admit_wait_steps is not None else []),
        *({"on": ["--engine-prefix-cache"], "off": ["--no-engine-prefix-cache"]}.get(args.prefix_cache, [])),
        *(["--engine-admit-ahead"] if args.engine_admit_ahead else []),
        *(["--engine-high-priority-stream"] if args.engine_high_priority_stream else []),
        *(["--trainer-sms", str(args.trainer_sms)] if args.trainer_sms and mode != "sync" else []),
        *(["--next-rollout-at", str(next_rollout_at)] if next_rollout_at is not None and mode != "sync" else []),
    ])
    start = time.perf_counter()
    with _engine_log() as engine_lines:
        train(cfg)
    total = time.perf_counter() - start
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time" in r]
    stamps = [r["time"] for r in steps]
    walls = [b - a for a, b in zip(stamps, stamps[1:])]  # wall of step i+1 (step 1 has no predecessor)
    measured = walls[max(0, args.warmup - 1):] or walls  # steps after the warm-up
    kept = steps[args.warmup:] or steps

    def mean(key: str) -> float:
        values = [r[key] for r in kept if key in r]
        return statistics.fmean(values) if values else float("nan")

    first = stamps[0] - steps[0].get("perf/step_time", 0.0) if stamps else 0.0
    timeline = [{"end_s": round(r["time"] - first, 3), **{k: round(r[k], 3) for k in TIMELINE if k in r}}
                for r in steps]  # per step, from the first step's start: how rollouts and training interleave
    return {"step_s": statistics.fmean(measured), "step_s_each": measured, "total_s": total, "timeline": timeline,
            "engine": engine_lines,  # how the engine was built (decode attention, or why not the kernel)
            "rollout_s": mean("perf/rollout_time"), "train_s": mean("perf/train_time") + mean("perf/logprobs_time"),
            "sync_s": mean("perf/sync_time"), "generated_tokens": mean("rollout/generated_tokens"),
            "staleness_mean": mean("async/staleness_mean"), "staleness_max": mean("async/staleness_max"),
            "overlap_s": mean("async/overlap_s"), "interrupt_wait_s": _per_step(kept, "async/interrupt_wait_s"),
            "resumed_turns": _per_step(kept, "async/resumed_turns"),
            "carried_turns": _per_step(kept, "async/carried_turns"),
            "tis_clipfrac": mean("train/tis_clipfrac"), "rollout_train_kl": mean("train/rollout_train_kl"),
            "prefills": _per_step(kept, "engine/prefills"),
            "prefill_tokens": _per_step(kept, "engine/prompt_tokens") - _per_step(kept, "engine/cached_prompt_tokens"),
            "cached_tokens": _per_step(kept, "engine/cached_prompt_tokens"), "eager_steps": _per_step(kept, "engine/decode_steps")
            - _per_step(kept, "engine/graph_steps"), "decode_steps": _per_step(kept, "engine/decode_steps"),
            "reward": mean("rollout/reward_mean"),
            **{f"engine_{k}": _per_step(kept, f"engine/{k}")
               for k in ("busy_s", "prefill_s", "decode_s", "launch_s", "eager_s", "capture_s")}}


TIMELINE = ("perf/step_time", "perf/rollout_time", "perf/logprobs_time", "perf/train_time", "perf/sync_time",
            "async/generate_s", "async/overlap_s", "async/wait_s", "engine/busy_s")


@contextlib.contextmanager
def _engine_log():
    """The embedded engine's INFO lines about how it was built, and its warnings, during the block."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    loggers = [logging.getLogger(n) for n in ("agentrl.engine.embedded.engine", "agentrl.engine.embedded.gpu_attention")]
    handler, levels = Keep(logging.INFO), [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(min(lg.getEffectiveLevel(), logging.INFO))
    try:
        yield lines
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _per_step(rows: list[dict], key: str) -> float:
    """Cumulative counters -> mean increase per step."""
    values = [r[key] for r in rows if key in r]
    return (values[-1] - values[0]) / max(len(values) - 1, 1) if len(values) > 1 else float("nan")


def markdown(results: dict, meta: dict) -> str:
    w = meta["workload"]
    head = (f"# Async speed-up ({meta['device']})\n\n{meta['date']}; torch {meta['torch']}; shape {meta['shape']} "
            f"(random weights); {meta['episodes_per_rollout']} episodes per rollout, {w['turns']} turns each, turn "
            f"lengths Pareto(alpha={w['tail_alpha']}, min {w['min_len']}) capped at {w['max_len']}, "
            f"{w['obs_len']}-token tool answers; embedded engine + torch trainer in one process"
            f"{' (engine on ' + meta['engine_device'] + ')' if meta.get('engine_device') else ' (one device)'}; "
            f"{meta['rollouts']} rollouts per mode, the first {meta['warmup']} left out.\n\n"
            f"`{meta['command']}`\n\n")
    cols = ["mode", "step_s", "speedup", "rollout_s", "train_s", "sync_s", "overlap_s", "staleness_mean",
            "resumed_turns", "carried_turns", "interrupt_wait_s", "tis_clipfrac", "rollout_train_kl", "generated_tokens",
            "prefills", "prefill_tokens", "cached_tokens", "decode_steps", "eager_steps"]
    base = results.get("sync", {}).get("step_s")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for mode, r in results.items():
        row = {"mode": mode, "speedup": base / r["step_s"] if base else float("nan"), **r}
        lines.append("| " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    note = ("\nstep_s: wall seconds per step. rollout_s: time the loop waited for the rollout (sync: all of "
            "generation; async: what was not hidden behind the previous step). train_s: logprobs + train. "
            "overlap_s: generation that ran before the trainer asked for the rollout (behind earlier steps). resumed_turns / interrupt_wait_s: turns "
            "continued after a weight update, and seconds the update waited for turns in flight, per step. "
            "carried_turns: turns that went on through an in-flight weight update, per step. "
            "prefills / prefill_tokens / cached_tokens / decode_steps / eager_steps: the engine's per step "
            "(cached: prompt tokens taken from the prefix cache; eager: not replayed from a CUDA graph).\n")
    engine = ["busy_s", "prefill_s", "decode_s", "launch_s", "eager_s", "capture_s"]
    lines += ["", "The engine's seconds per step (its worker thread): busy in all; prefills; decode steps, launch to "
              "tokens on the host; of that, launching; launching steps that ran eagerly; capturing CUDA graphs.", "",
              "| mode | " + " | ".join(engine) + " |", "|" + "---|" * (len(engine) + 1)]
    for mode, r in results.items():
        lines.append(f"| {mode} | " + " | ".join(_fmt(r.get(f"engine_{k}", float("nan"))) for k in engine) + " |")
    built = list(dict.fromkeys(line for r in results.values() for line in r.get("engine", [])))
    if built:
        lines += ["", "The engine as built (its log): " + "; ".join(built)]
    return head + "\n".join(lines) + "\n" + note


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.2f}"
    return str(v)


if __name__ == "__main__":
    main()
