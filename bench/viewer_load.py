"""How fast ``agentrl view`` opens a big run: a synthetic 10,000-episode run, a real headless Chromium.

Writes a run folder like one trained with ``--save-debug-rollout-data`` (``--rollouts`` dump files of
``--episodes`` episodes each: multi-turn conversations, ``--prompt-tokens`` + ``--response-tokens``
tokens with engine and trainer logprobs, entropy and advantages; every 10th episode failed), starts
``agentrl view`` on it as a user would (a subprocess, ``--port 0``) and drives Debian's Chromium
through Playwright (no browser download), timing:

* ``server start``: from launching ``agentrl view`` to its first answer;
* ``open (run view)``: from navigation to the page's first complete render (curves and steps);
* ``episodes view``: switching to the last rollout's groups;
* ``open an episode``: its conversation and token view;
* ``all rollouts, failed only``: every rollout's index, filtered to failed episodes.

"Ready" is the page's own signal (``body[data-ready="1"]``, set once a render has finished). Each
timing is the median of ``--repeats`` fresh page loads (a new page; the server's caches stay warm
after the first load, as for a user who reloads). Needs ``chromium`` and ``pip install playwright``.

    python bench/viewer_load.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import commit, save  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


def make_run(folder: Path, rollouts: int, episodes: int, prompt_tokens: int, response_tokens: int, seed: int = 0) -> int:
    """A run folder with ``rollouts`` dumps of ``episodes`` episodes; returns the bytes of its dumps."""
    from agentrl.obs.dump import DumpedEpisode, write_dump
    from agentrl.types import Sample

    rng = random.Random(seed)
    words = ["the", "answer", "is", "search", "result", "tool", "call", "value", "step", "check", "\n", "42", "=", "+"]
    texts = {i: rng.choice(words) + ("" if i % 3 else " ") for i in range(5000)}
    metrics = []
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(rollouts):
        out = []
        for k in range(episodes):
            turns = 3
            per_turn = response_tokens // turns
            mask = ([1] * (per_turn - 20) + [0] * 20) * turns
            n = len(mask)
            failed = k % 10 == 0
            sample = Sample(
                prompt_ids=[rng.randrange(5000) for _ in range(prompt_tokens)],
                response_ids=[rng.randrange(5000) for _ in range(n)], loss_mask=mask,
                rollout_logprobs=[-rng.random() * 3 if m else 0.0 for m in mask],
                reward=0.0 if failed else float(rng.random() < 0.4), status="failed" if failed else "ok",
                error="RuntimeError: tool server unreachable" if failed else None,
                group_id=r * 1_000_000 + k // 8, sample_index=k % 8, env_id="agentrl/ToolUse-v0", label="42",
                messages=[{"role": "user", "content": "What is 6 x 7? Use the calculator."}]
                + [m for _ in range(turns) for m in ({"role": "assistant", "content": '<tool_call>{"name": "calc"}</tool_call>'},
                                                     {"role": "tool", "content": "42"})],
                num_turns=turns, weight_versions=[r] * turns,
                metrics={"tool_calls": 3.0, "tool_errors": float(failed), "time_total": rng.random()})
            extras = {"kept": not failed}
            if not failed:
                adv = rng.gauss(0, 1)
                extras |= {"advantages": [adv * m for m in mask],
                           "trainer_logprobs": [lp + rng.gauss(0, 1e-3) * m for lp, m in zip(sample.rollout_logprobs, mask)],
                           "entropy": [rng.random() * 2 * m for m in mask]}
            out.append(DumpedEpisode(sample, extras))
        write_dump(folder / "rollout_data" / f"rollout_{r:06d}.jsonl.gz", {"kind": "rollout", "rollout_id": r, "step": r + 1},
                   out, texts)
        metrics.append({"step": r + 1, "rollout/reward_mean": 0.3 + r / rollouts / 3, "rollout/response_len_mean": float(n),
                        "train/entropy": 1.0 - r / rollouts / 2, "train/ppo_kl": 1e-3, "rollout/status_failed": 0.1,
                        "perf/step_time": 60.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "config.json").write_text(json.dumps({"model-path": "synthetic", "save-debug-rollout-data": True}))
    return sum(p.stat().st_size for p in (folder / "rollout_data").iterdir())


def measure(folder: Path, rollouts: int, repeats: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "view", str(folder), "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        urllib.request.urlopen(url + "api/sources.json", timeout=30).read()
        times: dict[str, list[float]] = {"server start": [time.perf_counter() - t0]}
        last = f"rollout_{rollouts - 1:06d}"
        steps = {"open (run view)": "", "episodes view": f"#view=episodes&dump={last}",
                 "open an episode": f"#view=episodes&dump={last}&ep=0:{last}:1&tok=300",
                 "all rollouts, failed only": "#view=episodes&dump=*&status=failed"}
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS,
                                                       viewport={"width": 1400, "height": 1000})
            for _ in range(repeats):
                for name, frag in steps.items():
                    page = ctx.new_page()
                    start = time.perf_counter()
                    page.goto(url + frag)
                    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                    times.setdefault(name, []).append(time.perf_counter() - start)
                    if page.inner_text("#msg"):
                        raise RuntimeError(f"{name}: the page says {page.inner_text('#msg')!r}")
                    page.close()
            ctx.close()
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--episodes", type=int, default=200, help="episodes per rollout")
    ap.add_argument("--prompt-tokens", type=int, default=200)
    ap.add_argument("--response-tokens", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-dir", help="keep the synthetic run here (default: a temporary folder)")
    ap.add_argument("--out", help="write viewer_load_cpu.json/.md here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.run_dir or tmp) / "run"
        t = time.perf_counter()
        size = make_run(folder, args.rollouts, args.episodes, args.prompt_tokens, args.response_tokens)
        made = time.perf_counter() - t
        load = os.getloadavg()[0]
        times = measure(folder, args.rollouts, args.repeats)
    n = args.rollouts * args.episodes
    rows = [(name, statistics.median(v), min(v), max(v)) for name, v in times.items()]
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    machine = f"{os.cpu_count()} CPU cores ({platform.machine()}, 1-minute load average {load:.2f} before the run); Python {platform.python_version()}"
    md = [f"# Viewer load time, {n:,}-episode run (cpu)", "",
          f"{when}; commit {commit()}; {machine}; `python bench/viewer_load.py {' '.join(sys.argv[1:])}`", "",
          f"{args.rollouts} rollout dumps x {args.episodes} episodes ({args.prompt_tokens} prompt + {args.response_tokens} "
          f"response tokens each, 3 turns, every 10th failed): {size / 1e6:.0f} MB of dumps, written in {made:.0f} s.", "",
          "| step | median s | min s | max s |", "|---|---|---|---|"]
    md += [f"| {name} | {med:.2f} | {lo:.2f} | {hi:.2f} |" for name, med, lo, hi in rows]
    md += ["", "Each page step is timed from navigation to the page's ready signal, in a fresh page; `server start` "
           "is one launch of `agentrl view` (Python start-up and imports included) until its first answer."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        payload = {"when": when, "commit": commit(), "machine": machine, "args": vars(args), "episodes": n, "dump_bytes": size,
                   "times_s": times}
        print("wrote", save(args.out, "viewer_load_cpu", payload, text))


if __name__ == "__main__":
    main()
