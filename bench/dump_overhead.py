"""What ``--save-debug-rollout-data`` costs a run: the quickstart, reduced, with and without dumps.

Runs ``python train.py --config recipes/quickstart/config.yaml`` (SmolLM2-135M-Instruct on the CPU)
shortened to ``--num-rollout`` rollouts and ``--eval-max-prompts`` held-out prompts (evaluated before
the first and after the last rollout), alternately without and with dumps, ``--pairs`` times, each
in a fresh process. Reports each run's wall time (process start to exit) and, from the dumping
runs' ``metrics.jsonl``, the seconds each step spent writing its dump (``perf/dump_time``) against
the step's time: the direct cost, which machine load does not blur the way it blurs wall times.

    python bench/dump_overhead.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import commit, save  # noqa: E402


def run(folder: Path, dumps: bool, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "train.py", "--config", "recipes/quickstart/config.yaml", "--num-rollout", str(args.num_rollout),
           "--eval-interval", str(args.num_rollout), "--eval-max-prompts", str(args.eval_max_prompts),
           "--output-dir", str(folder), "--save", str(folder / "ckpt"), "--save-interval", str(args.num_rollout)]
    if dumps:
        cmd.append("--save-debug-rollout-data")
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-rollout", type=int, default=3)
    ap.add_argument("--eval-max-prompts", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--keep", help="copy the last run with dumps here (e.g. to open it with agentrl view)")
    ap.add_argument("--out", help="write dump_overhead_cpu.json/.md here")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    walls: dict[str, list[float]] = {"without dumps": [], "with dumps": []}
    dump_s, step_s, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.pairs):
            for dumps in (False, True):
                folder = Path(tmp) / f"run{k}_{int(dumps)}"
                walls["with dumps" if dumps else "without dumps"].append(run(folder, dumps, args))
                if dumps:
                    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
                    steps = [r for r in rows if "perf/step_time" in r]
                    dump_s += [r["perf/dump_time"] for r in steps]
                    step_s += [r["perf/step_time"] for r in steps]
                    sizes += [p.stat().st_size for p in (folder / "rollout_data").iterdir()]
                    if args.keep:
                        shutil.rmtree(args.keep, ignore_errors=True)
                        shutil.copytree(folder, args.keep, ignore=shutil.ignore_patterns("ckpt", "weights"))
    off, on = statistics.median(walls["without dumps"]), statistics.median(walls["with dumps"])
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}, 1-minute load average {load:.2f} before the run, "
               f"shared with other work); Python {platform.python_version()}")
    md = ["# Rollout dumps: overhead on the quickstart (cpu)", "",
          f"{when}; commit {commit()}; {machine}; `python bench/dump_overhead.py {' '.join(sys.argv[1:])}`", "",
          f"The quickstart recipe (SmolLM2-135M-Instruct, 4 prompts x 8 samples per rollout) reduced to "
          f"{args.num_rollout} rollouts and {args.eval_max_prompts} held-out prompts evaluated twice; runs alternate "
          "without and with `--save-debug-rollout-data`, each a fresh `python train.py` process.", "",
          "| runs | wall s (each) | median s |", "|---|---|---|"]
    md += [f"| {name} | {', '.join(f'{w:.1f}' for w in v)} | {statistics.median(v):.1f} |" for name, v in walls.items()]
    spread = max(max(v) / min(v) - 1 for v in walls.values())
    md += ["", f"Wall time with dumps / without: **{on / off:.3f}** (medians; {100 * (on / off - 1):+.1f}%). Runs of the "
           f"same setting differed by up to {100 * spread:.0f}% here (a machine shared with other work), more than "
           "any difference the dumps make: the direct cost below is the measure to read.", "",
           f"Direct cost, from the dumping runs' metrics: writing a rollout's dump took {statistics.mean(dump_s) * 1e3:.0f} ms "
           f"on average (max {max(dump_s) * 1e3:.0f} ms) of a {statistics.mean(step_s):.1f} s step: "
           f"**{100 * sum(dump_s) / sum(step_s):.2f}%** of the steps' time. Dump files: "
           f"{statistics.mean(sizes) / 1e3:.0f} kB on average. The trainer logprobs and entropy in the dump come from "
           "the training step's own forward pass (no extra pass)."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        payload = {"when": when, "commit": commit(), "machine": machine, "args": vars(args), "wall_s": walls, "dump_s": dump_s,
                   "step_s": step_s, "dump_bytes": sizes}
        print("wrote", save(args.out, "dump_overhead_cpu", payload, text))


if __name__ == "__main__":
    main()
