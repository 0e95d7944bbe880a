"""Prefill latency of the embedded engine's fast path, by prompt lengths (no decode, no scheduler).

Multi-turn rollouts prefill a few prompts at a time, and their lengths rarely repeat, so the time
of a prefill of *new* lengths matters as much as that of a repeated one. For each set of prompt
lengths this prints the time of its first call and of three repeats, with the ``torch.compile``'d
blocks on and off, then a ``torch.profiler`` table of one prefill of new lengths (CPU and CUDA
time per op: a kernel with a large CPU cost and a small CUDA cost is overhead, not work).

    python bench/engine_prefill.py --shape qwen2.5-0.5b --out bench/results    # GPU
    python bench/engine_prefill.py --shape tiny                                 # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import device_tag, save  # noqa: E402

LENGTHS = [[64], [300], [300, 300], [1000], [2000, 500, 100], [64] * 16, [300], [301], [302, 40]]


def main() -> None:
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.engine.embedded.sampling import SamplingRows
    from agentrl.testing.tiny import BENCH_SHAPES, make_tiny_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", help="a key of agentrl.testing.tiny.BENCH_SHAPES, or 'tiny'")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: SmolLM2's, via its alias)")
    p.add_argument("--max-seq-len", type=int, default=2464)
    p.add_argument("--out", default=None, help="folder for engine_prefill_<device>.json/.md")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = {} if args.shape == "tiny" else BENCH_SHAPES[args.shape]
    model_dir = make_tiny_model(Path(tempfile.mkdtemp(prefix="agentrl-prefill-")) / "model", "qwen2",
                                tokenizer=args.tokenizer, **shape)

    def rows(n: int) -> SamplingRows:
        return SamplingRows.from_lists(temperature=[1.0] * n, top_p=[1.0] * n, top_k=[-1] * n, seed=list(range(n)),
                                       step=[0] * n)

    def timed(runner, prompts) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        runner.prefill(list(range(len(prompts))), prompts, rows(len(prompts))).cpu()
        return 1e3 * (time.perf_counter() - t0)

    results, tables = [], {}
    for compile_ in (True, False):
        engine = EmbeddedEngine(str(model_dir), device=device, max_batch_size=64, max_seq_len=args.max_seq_len,
                                compile=compile_)
        runner = engine._scheduler.runner
        runner.allocate()
        with torch.inference_mode():
            for lengths in LENGTHS:
                prompts = [[100 + (i * 7) % 1000 for i in range(n)] for n in lengths]
                ms = [timed(runner, prompts) for _ in range(4)]
                results.append({"compile": compile_, "lengths": lengths, "first_ms": ms[0], "repeat_ms": min(ms[1:])})
                print(f"compile={compile_} lengths={lengths}: first {ms[0]:.1f} ms, repeat {min(ms[1:]):.1f} ms", flush=True)
            if compile_:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if device == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                prompts = [[100 + (i * 7) % 1000 for i in range(n)] for n in (303, 120)]  # lengths not seen yet
                with torch.profiler.profile(activities=acts) as prof:
                    runner.prefill([0, 1], prompts, rows(2)).cpu()
                tables["cpu"] = prof.key_averages().table(sort_by="cpu_time_total", row_limit=20)
                if device == "cuda":
                    tables["cuda"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
                print("\n\n".join(tables.values()))
        runner.release()
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": name,
            "torch": torch.__version__, "shape": args.shape, "command": "python " + " ".join(sys.argv)}
    lines = [f"# Prefill latency ({name})\n", f"{meta['date']}; torch {meta['torch']}; shape {args.shape} (random "
             f"weights); ms per prefill call (first call of these lengths, best of three repeats).\n",
             f"`{meta['command']}`\n", "| compile | prompt lengths | first ms | repeat ms |", "|---|---|---:|---:|"]
    lines += [f"| {r['compile']} | {r['lengths']} | {r['first_ms']:.1f} | {r['repeat_ms']:.1f} |" for r in results]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        save(args.out, f"engine_prefill_{device_tag(name)}", {"meta": meta, "results": results, "profile": tables}, md)


if __name__ == "__main__":
    main()
