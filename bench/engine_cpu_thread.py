"""CPU decode-step time of the embedded engine on the main thread and on another thread.

The engine decodes on its own worker thread. On the CPU that thread was measured slower than the
main thread for the very same step, but only when another thread of the process had run
multi-threaded torch operations before (each thread that starts OpenMP work gets its own pool).
Each scenario runs in a fresh process:

* ``main``: the main thread prefills and decodes;
* ``worker``: the main thread prefills with all threads, then a worker thread decodes;
* ``worker-alone``: the main thread prefills with one thread (no OpenMP pool of its own), then a
  worker thread decodes with all threads;
* ``worker-released``: as ``worker``, but the main thread gives its OpenMP workers back
  (:func:`agentrl.utils.openmp.release_thread_pool`, as ``EmbeddedEngine.generate`` does on the CPU)
  before the worker thread decodes.

For each: ms per decode step of ``--batch`` requests, best and mean of ``--rounds`` rounds of 20 steps.
OpenMP settings (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) are read from the environment when torch
loads, so run the script under them to compare (the table records them).

    python bench/engine_cpu_thread.py --dtype bfloat16 --out bench/results
    OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=100000 python bench/engine_cpu_thread.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("main", "worker", "worker-alone", "worker-released")


def run_scenario(scenario: str, model: str, dtype: str, batch: int, threads: int, rounds: int) -> list[float]:
    """In this process: build the engine, prefill ``batch`` prompts, time decode steps as the scenario says."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from agentrl.engine.embedded import EmbeddedEngine
    from agentrl.engine.embedded.sampling import SamplingRows

    torch.set_num_threads(1 if scenario == "worker-alone" else threads)
    engine = EmbeddedEngine(model, device="cpu", dtype=getattr(torch, dtype), max_batch_size=batch, max_seq_len=512)
    runner = engine._scheduler.runner
    runner.allocate()
    prompts = torch.randint(100, 40000, (batch, 64), generator=torch.Generator().manual_seed(0)).tolist()

    def rows(step: int) -> SamplingRows:
        return SamplingRows.from_lists(temperature=[1.0] * batch, top_p=[1.0] * batch, top_k=[-1] * batch,
                                       seed=list(range(batch)), step=[step] * batch)

    with torch.inference_mode():
        first = runner.prefill(list(range(batch)), prompts, rows(0))
    state = {"tok": first[0].long().numpy(), "step": 0}
    times: list[float] = []

    def decode() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(rounds):
                for i in range(25):  # 5 untimed, then 20 timed
                    if i == 5:
                        t0 = time.perf_counter()
                    s = state["step"]
                    out = runner.collect(runner.launch(state["tok"], np.full(batch, 64 + s), rows(s + 1)))
                    state["tok"], state["step"] = out[0].astype(np.int64), s + 1
                times.append(1e3 * (time.perf_counter() - t0) / 20)

    if scenario == "worker-released":
        from agentrl.utils.openmp import release_thread_pool

        release_thread_pool()
    if scenario == "main":
        decode()
    else:
        worker = threading.Thread(target=decode)
        worker.start()
        worker.join()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per scenario, interleaved")
    p.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)  # internal: one scenario, JSON out
    p.add_argument("--out", default=None, help="folder for engine_cpu_thread_<dtype>.json/.md")
    args = p.parse_args()
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.model, args.dtype, args.batch, args.threads, args.rounds)))
        return
    results: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for rep in range(args.repeats):
        for scenario in SCENARIOS:
            cmd = [sys.executable, __file__, "--scenario", scenario, "--model", args.model, "--dtype", args.dtype,
                   "--batch", str(args.batch), "--threads", str(args.threads), "--rounds", str(args.rounds)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{scenario} failed:\n{done.stderr[-2000:]}")
            ms = json.loads(done.stdout.strip().splitlines()[-1])
            results[scenario] += ms
            print(f"{scenario} (process {rep + 1}): " + ", ".join(f"{x:.1f}" for x in ms) + " ms/step", flush=True)
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))}
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "threads": args.threads, "model": args.model, "dtype": args.dtype,
            "batch": args.batch, "threading_env": env, "command": "python " + " ".join(sys.argv)}
    lines = [f"# CPU decode step: main thread against a worker thread ({args.model}, {args.dtype})\n",
             f"{meta['date']}; {meta['cpus']} CPUs, {args.threads} torch threads, batch {args.batch}, positions 64+; "
             f"threading environment: {', '.join(f'`{k}={v}`' for k, v in env.items()) or 'none set'}.\n",
             f"`{meta['command']}`\n", "| scenario | best ms/step | mean ms/step | rounds |", "|---|---:|---:|---:|"]
    for scenario, ms in results.items():
        lines.append(f"| {scenario} | {min(ms):.1f} | {statistics.fmean(ms):.1f} | {len(ms)} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        tag = args.dtype + ("_" + "_".join(f"{k}-{v}" for k, v in env.items()).lower() if env else "")
        (out / f"engine_cpu_thread_{tag}.json").write_text(json.dumps({"meta": meta, "ms_per_step": results}, indent=2))
        (out / f"engine_cpu_thread_{tag}.md").write_text(md)


if __name__ == "__main__":
    main()
