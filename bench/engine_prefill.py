"""Prefill throughput and latency of the embedded engine's fast path.

Part 1, throughput: ``--requests`` prompts of ``--tokens`` new tokens each (default 64 x 300) in one
engine step, as a mixed step (``FastRunner.mixed``: one packed forward, the variable-length Triton
attention) and as the separate prefill without mixed steps (``FastRunner.prefill``). Each is timed
``--repeats`` times after two warm-ups (the device synchronised around each call; the median is
reported) and turned into model FLOP/s and MFU: the FLOPs of every linear layer for every token,
the causal attention (QK^T and PV over each token's own positions) and the LM head for the one row
per prompt that is sampled, over the bf16 peak (``--peak-tflops``, by default the H100 SXM
datasheet's 989.4 dense TFLOP/s) and over the rate of an 8192^3 bf16 matrix product measured in the
same run. The same step is then run through the engine itself (``generate`` of every prompt with
``max_new_tokens=1``, all admitted in one step: ``stats.prefills`` must be 1), whose ``prefill_s``
is the step's wall time including the scheduler's bookkeeping.

Part 2, latency: prompts of a few sets of lengths, each set's first call (new lengths) and the best
of three repeats, with and without mixed steps.

    python bench/engine_prefill.py --shape qwen2.5-0.5b --out bench/results     # GPU
    python bench/engine_prefill.py --shape tiny --requests 4 --tokens 32         # CPU smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import device_tag, save  # noqa: E402

LENGTHS = [[64], [300], [300, 300], [1000], [2000, 500, 100], [64] * 16, [300], [301], [302, 40]]


def model_flops(cfg, lengths: list[int], sampled: int) -> float:
    """FLOPs of a prefill of prompts of ``lengths`` tokens (no cached prefix), ``sampled`` logit rows."""
    hidden, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    linear = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden + 3 * hidden * inter
    tokens = sum(lengths)
    attention = sum(n * (n + 1) // 2 for n in lengths) * 4 * heads * head_dim  # QK^T and PV, causal
    return layers * (2 * linear * tokens + attention) + 2 * hidden * cfg.vocab_size * sampled


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn, device: str, repeats: int) -> list[float]:
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def matmul_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = statistics.median(timed_ms(lambda: a @ b, device, 10))
    return 2 * 8192**3 / ms / 1e9


def main() -> None:
    from agentrl.engine import SamplingParams
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.engine.embedded.mixed import Part
    from agentrl.engine.embedded.sampling import SamplingRows
    from agentrl.testing.tiny import BENCH_SHAPES, make_tiny_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a key of agentrl.testing.tiny.BENCH_SHAPES, or 'tiny'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, via its alias)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--tokens", type=int, default=300, help="new tokens per request")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.4, help="bf16 dense peak of the card (H100 SXM: 989.4)")
    p.add_argument("--max-seq-len", type=int, default=2464)
    p.add_argument("--no-latency", action="store_true", help="skip part 2")
    p.add_argument("--out", default=None, help="folder for engine_prefill_<device>.json/.md")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = {} if args.shape == "tiny" else BENCH_SHAPES[args.shape]
    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="agentrl-prefill-")) / "model", "qwen2",
                                tokenizer=args.tokenizer, **shape)
    r, n = args.requests, args.tokens
    g = np.random.default_rng(0)

    def rows(k: int) -> SamplingRows:
        return SamplingRows.from_lists(temperature=[1.0] * k, top_p=[1.0] * k, top_k=[-1] * k, seed=list(range(k)),
                                       step=[0] * k)

    def prefill_call(runner, mixed: bool, prompts: list[list[int]]):
        """One prefill of every prompt from position 0: the mixed step's or the plain one."""
        if mixed:
            parts = [Part(i, np.asarray(pr, np.int64), 0, i, 0, True) for i, pr in enumerate(prompts)]
            empty = np.zeros(0, np.int64)
            return lambda: runner.mixed(empty, empty, parts, rows(len(prompts)))
        return lambda: runner.prefill(list(range(len(prompts))), prompts, rows(len(prompts))).cpu()

    measured = matmul_tflops(device)
    throughput, latency, engines = [], [], {}
    for mixed in (True, False):
        engine = EmbeddedEngine(str(model_dir), device=device, max_batch_size=max(r, 16), max_seq_len=args.max_seq_len,
                                mixed_prefill=mixed, prefix_cache=False, prefill_token_budget=r * n)
        engines[mixed] = engine
        runner = engine._scheduler.runner
        vocab = engine.vocab_size
        cfg = engine.model.config
        runner.allocate()
        prompts = [g.integers(100, vocab, n).tolist() for _ in range(r)]
        step = prefill_call(runner, mixed, prompts)
        with torch.inference_mode():
            ms = timed_ms(step, device, args.repeats)
        flops = model_flops(cfg, [n] * r, r)
        med = statistics.median(ms)
        row = {"mixed": mixed, "requests": r, "tokens": n, "ms": med, "ms_each": ms, "flops": flops,
               "tflops": flops / med / 1e9, "mfu": flops / med / 1e9 / args.peak_tflops,
               "of_matmul": flops / med / 1e9 / measured if measured else None}
        runner.release()

        async def one_step(prompts=prompts, engine=engine) -> list[tuple[int, float]]:
            """Three rounds of every prompt admitted at once (queued while the worker waits for the lock)."""
            s, sp, out = engine._scheduler, SamplingParams(temperature=1.0, max_new_tokens=1, ignore_eos=True), []
            async with engine:
                for _ in range(3):
                    before = engine.stats.prefills, engine.stats.prefill_s
                    with s._cv:
                        futures = [s.submit(engine._request(pr, sp, None)) for pr in prompts]
                    await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
                    out.append((engine.stats.prefills - before[0], engine.stats.prefill_s - before[1]))
            return out

        steps = asyncio.run(one_step())  # the first round compiles what the direct calls did not
        row["engine_steps"] = [s for s, _ in steps]
        row["engine_ms"] = [1e3 * t for _, t in steps]
        best = min(row["engine_ms"])
        row["engine_mfu"] = flops / best / 1e9 / args.peak_tflops
        throughput.append(row)
        print(f"mixed={mixed}: {r} x {n} tokens in {med:.2f} ms (median of {len(ms)}): {row['tflops']:.0f} TFLOP/s, "
              f"MFU {100 * row['mfu']:.1f}%; through the engine {row['engine_steps']} step(s), "
              f"{', '.join(f'{x:.1f}' for x in row['engine_ms'])} ms", flush=True)
        if args.no_latency:
            continue
        runner.allocate()
        with torch.inference_mode():
            for lengths in LENGTHS:
                batch = [[100 + (i * 7) % 1000 for i in range(k)] for k in lengths]
                call = prefill_call(runner, mixed, batch)
                each = []
                for _ in range(4):
                    _sync(device)
                    t0 = time.perf_counter()
                    call()
                    _sync(device)
                    each.append(1e3 * (time.perf_counter() - t0))
                latency.append({"mixed": mixed, "lengths": lengths, "first_ms": each[0], "repeat_ms": min(each[1:])})
                print(f"mixed={mixed} lengths={lengths}: first {each[0]:.1f} ms, repeat {min(each[1:]):.1f} ms", flush=True)
        runner.release()

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": name,
            "torch": torch.__version__, "shape": args.shape, "peak_tflops": args.peak_tflops,
            "matmul_tflops": measured, "command": "python " + " ".join(sys.argv)}
    lines = [f"# Prefill throughput and latency ({name})\n",
             f"{meta['date']}; torch {meta['torch']}; shape {args.shape} (random weights, bf16 on CUDA); "
             f"MFU over {args.peak_tflops} TFLOP/s" + (f"; an 8192^3 bf16 matmul ran at {measured:.0f} TFLOP/s here"
                                                        if measured else "") + ".\n",
             f"`{meta['command']}`\n",
             f"{r} prompts of {n} new tokens in one engine step (median of {args.repeats} calls; through the engine: "
             "3 runs of one step each, the first compiling):\n",
             "| mixed step | ms | TFLOP/s | MFU | of the matmul rate | engine steps | engine ms | engine MFU (best) |",
             "|---|---:|---:|---:|---:|---|---|---:|"]
    for t in throughput:
        mm = f"{100 * t['of_matmul']:.1f}%" if t["of_matmul"] else "-"
        lines.append(f"| {t['mixed']} | {t['ms']:.2f} | {t['tflops']:.0f} | {100 * t['mfu']:.1f}% | {mm} | "
                     f"{t['engine_steps']} | {', '.join(f'{x:.1f}' for x in t['engine_ms'])} | "
                     f"{100 * t['engine_mfu']:.1f}% |")
    if latency:
        lines += ["", "Latency by prompt lengths (ms per call: first call of these lengths, best of three repeats):", "",
                  "| mixed step | prompt lengths | first ms | repeat ms |", "|---|---|---:|---:|"]
        lines += [f"| {x['mixed']} | {x['lengths']} | {x['first_ms']:.1f} | {x['repeat_ms']:.1f} |" for x in latency]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        save(args.out, f"engine_prefill_{device_tag(name)}", {"meta": meta, "throughput": throughput,
                                                             "latency": latency}, md)


if __name__ == "__main__":
    main()
