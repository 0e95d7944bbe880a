"""Grading latency: answers scored through ``envs/_scoring.py``, jailed (this tree) or not (a baseline).

Every answer that reaches a scorer able to evaluate it (reasoning-gym's scorers, Math-v0's
symbolic check) is graded by a scoring server in the Python sandbox's jail, each answer in a
fresh confined fork of it. This measures what that costs per answer, against a baseline tree
whose ``envs/_scoring.py`` is the earlier unjailed worker pool (``--baseline DIR``: a checkout,
e.g. of the commit before the jail).

For each case: ``step`` of a fresh episode with a correct answer (a different item each time,
so no cache of an earlier answer helps), ``--answers`` times (default 40) after one first
answer. The table gives the first answer's time (the server's start and imports included), the
median and the 90th percentile per answer when answers come one at a time (``spaced``: 50 ms
apart, as episodes finish at different times) and back to back from one thread (``burst``), and
the answers per second of ``MAX_WORKERS`` threads grading at once.

Usage::

    python bench/scoring_latency.py                                   # this tree only
    git archive dad751f | tar -x -C /tmp/base                         # the tree before the jail
    python bench/scoring_latency.py --baseline /tmp/base --baseline-commit dad751f --out bench/results
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SIZE = 200  # items per reasoning-gym dataset: the answers differ from one another
CASES = {  # name -> (environment, its task)
    "ReasoningGym leg_counting (no evaluation)": ("rg", "leg_counting"),
    "ReasoningGym countdown (parse_expr)": ("rg", "countdown"),
    "ReasoningGym n_queens (eval)": ("rg", "n_queens"),
    "ReasoningGym simple_integration (sympy)": ("rg", "simple_integration"),
    "Math-v0 symbolic (math-verify)": ("math", None),
}


def _episodes(kind: str, task: str | None, n: int) -> list[tuple[Any, str]]:
    """``n`` environments, reset, each with a correct reply to a different question."""
    if kind == "math":
        from envs.math import MathEnv

        out = []
        for i in range(n):
            env = MathEnv()
            env.reset(options={"question": "Expand.", "answer": f"x^2+{2 * (i + 1)}x+{(i + 1) ** 2}"})
            out.append((env, f"\\boxed{{(x+{i + 1})^2}}"))
        return out
    from envs.reasoning_gym_env import ReasoningGymEnv

    env = ReasoningGymEnv(task, size=SIZE, seed=0)
    out = []
    for i in range(n):
        e = ReasoningGymEnv.__new__(ReasoningGymEnv)  # the same dataset, without making it n times
        e.__dict__.update(env.__dict__)
        e.reset(options={"index": i % SIZE})
        out.append((e, f"<answer>{e.entry['answer']}</answer>"))
    return out


def _grade(episode: tuple[Any, str]) -> float:
    env, reply = episode
    start = time.perf_counter()
    _, reward, *_ = env.step(reply)
    seconds = time.perf_counter() - start
    if reward != 1.0:
        raise RuntimeError(f"a correct answer scored {reward}: {reply[:80]!r}")
    return seconds


def _stats(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times) * 1e3, times[int(0.9 * (len(times) - 1))] * 1e3


def measure(answers: int) -> dict[str, Any]:
    """Time each case in this process (with whatever ``envs`` is importable)."""
    from envs import _scoring

    rows = {}
    for name, (kind, task) in CASES.items():
        workers = _scoring.MAX_WORKERS
        episodes = iter(_episodes(kind, task, 1 + 3 * answers + 3 * workers))
        first = _grade(next(episodes))
        spaced = []
        for _ in range(answers):
            time.sleep(0.05)
            spaced.append(_grade(next(episodes)))
        burst = [_grade(next(episodes)) for _ in range(answers)]
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda _: _scoring.call("time:sleep", 1.0, timeout=60.0), range(workers)))  # all servers up
            list(pool.map(_grade, [next(episodes) for _ in range(3 * workers)]))  # and warmed up for this case
            batch = [next(episodes) for _ in range(answers)]
            start = time.perf_counter()
            list(pool.map(_grade, batch))
            per_second = answers / (time.perf_counter() - start)
        (spaced_median, spaced_p90), (burst_median, burst_p90) = _stats(spaced), _stats(burst)
        rows[name] = {"first_ms": first * 1e3, "spaced_median_ms": spaced_median, "spaced_p90_ms": spaced_p90,
                      "burst_median_ms": burst_median, "burst_p90_ms": burst_p90, "answers_per_s": per_second}
    return {"rows": rows, "workers": _scoring.MAX_WORKERS}


def _commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _run_tree(root: Path, answers: int) -> dict[str, Any]:
    """Measure in a fresh interpreter that imports ``envs`` from ``root``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path[1:]])}
    proc = subprocess.run([sys.executable, __file__, "--measure", "--answers", str(answers)], cwd=root, env=env,
                          capture_output=True, text=True, check=True)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "commit": _commit(root)}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| case | grader | first answer ms | spaced: median ms | p90 ms | burst: median ms | p90 ms "
             "| answers/s, all servers |", "|---|---|---|---|---|---|---|---|"]
    for name in CASES:
        for label, res in results.items():
            r = res["rows"][name]
            lines.append(f"| {name} | {label} | {r['first_ms']:.0f} | {r['spaced_median_ms']:.1f} "
                         f"| {r['spaced_p90_ms']:.1f} | {r['burst_median_ms']:.1f} | {r['burst_p90_ms']:.1f} "
                         f"| {r['answers_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=40, help="answers timed per case")
    p.add_argument("--baseline", help="a checkout whose envs/_scoring.py is the unjailed worker pool")
    p.add_argument("--baseline-commit", help="the baseline's commit, when it is not a git checkout (git archive)")
    p.add_argument("--out", help="write scoring_latency_cpu.{json,md} here")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    args = p.parse_args()
    if args.measure:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(measure(args.answers)))
        return
    load = os.getloadavg()[0]
    results = {}
    if args.baseline:
        results["before: unjailed worker"] = _run_tree(Path(args.baseline).resolve(), args.answers)
        if args.baseline_commit:
            results["before: unjailed worker"]["commit"] = args.baseline_commit
    results["after: jailed server, fork per answer"] = _run_tree(ROOT, args.answers)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}, {platform.processor() or 'cpu'}, Linux "
               f"{platform.release()}, 1-minute load average {load:.2f} before the run); "
               f"Python {platform.python_version()}; {'root' if os.geteuid() == 0 else 'uid ' + str(os.geteuid())}")
    commits = ", ".join(f"{label}: commit {r['commit']}" for label, r in results.items())
    command = "python bench/scoring_latency.py" + (f" --baseline {args.baseline}" if args.baseline else "") + (
        f" --baseline-commit {args.baseline_commit}" if args.baseline_commit else "") + (
        f" --out {args.out}" if args.out else "")
    md = (f"# Grading latency per answer, unjailed vs jailed (cpu)\n\n{when}; {commits}; {machine}; "
          f"{args.answers} answers per case; `{command}`\n\n{table(results)}\n")
    print(md)
    if args.out:
        sys.path.insert(0, str(ROOT))
        from bench._report import save

        save(args.out, "scoring_latency_cpu", {"when": when, "machine": machine, "command": command,
                                               "results": results}, md)


if __name__ == "__main__":
    main()
