"""GRPO against GiGPO on FrozenLake (fresh random 4x4 maps), SmolLM2-135M-Instruct, the CPU, equal wall time.

``run`` trains one estimator with the settings below for ``--minutes`` of wall time (then Ctrl-C, and a
kill if the step in progress has not ended a minute later), evaluating greedily on the first 20 held-out
maps (unseen seeds) every ``--eval-interval`` rollouts, and logs the machine's load average every 30 s;
``report`` reads every run under a folder and writes held-out success and reward and the training reward
against wall-clock minutes (the comparison; only points within each run's budget) to the folder
``frozenlake_gigpo_cpu[_<tag>]/``: ``report.md`` (the table), ``summary.json`` (the numbers, each run's
commit, the machine, the date, the commands), ``curves.png`` (the plot) and each run's ``metrics.jsonl``.

Both estimators start from one warm-started model (the recipe's supervised warm start on the oracle, run
once: ``--init``), so the comparison spends its minutes on RL alone. Run the estimators one after the other
on an idle machine (two at once on two cores would each get less than a core)::

    python train.py --config recipes/frozenlake/config.yaml --num-rollout 0 --eval-interval 0 \
        --output-dir runs/fl_gigpo/warm --save runs/fl_gigpo/warm/ckpt          # the shared warm start
    python bench/frozenlake_gigpo.py run --estimator grpo --init runs/fl_gigpo/warm/ckpt --minutes 20 --out runs/fl_gigpo
    python bench/frozenlake_gigpo.py run --estimator gigpo --init runs/fl_gigpo/warm/ckpt --minutes 20 --out runs/fl_gigpo
    python bench/frozenlake_gigpo.py report runs/fl_gigpo --out bench/results --tag warm

Without ``--init`` each run does the recipe's warm start itself. On a machine shared with other work the
runs do not see the same load: compare the load averages the report lists before reading a difference in
rollouts per minute. Where the load is far above the core count, start the two runs at the same moment
instead, each on one torch thread (``--threads 1``), so both see the same load and neither waits on a
second thread the scheduler has parked.

Both estimators get the same prompts, seeds, budgets and optimiser; only ``--advantage-estimator``
differs (GiGPO with ``--gamma 0.95``, the paper's per-turn discount; GRPO ignores ``--gamma``).
The game's state key is the player's position, so GiGPO compares the turns of a group (one map)
taken from the same square.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import commit  # noqa: E402

SETTINGS = [
    "--config", "recipes/frozenlake/config.yaml",  # its environment (surroundings, progress shaping 0.2), turns, lengths
    "--curriculum-levels", "4",                    # 4x4 maps throughout: both estimators see the same tasks
    "--rollout-batch-size", "2", "--num-rollout", "200",  # two maps of four episodes a rollout
    "--engine-prefix-cache", "--episode-timeout", "none",
]
"""The shared settings: two maps of four episodes a rollout; the held-out score is the recipe's (greedy, the
first 20 unseen 4x4 maps). No episode time limit: on a loaded CPU (load average near 20 on 2 cores) held-out
episodes ran past the default limit, a failure of the machine, not of the episode. An earlier version of
this comparison (results in ``frozenlake_gigpo_cpu/``) started from the untrained model, sampled 4 held-out
maps at temperature 1 and gave no signal: untrained, the greedy reply names no move on any map."""


ESTIMATORS = {"grpo": ["--advantage-estimator", "grpo"],
              "gigpo": ["--advantage-estimator", "gigpo", "--gamma", "0.95"]}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out) / f"{args.estimator}_seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    init = ["--model-path", str(Path(args.init).resolve()), "--sft-data", "none"] if args.init else []
    cmd = [sys.executable, "train.py", *SETTINGS, *init, *ESTIMATORS[args.estimator], "--seed", str(args.seed),
           "--eval-interval", str(args.eval_interval), "--output-dir", str(out)]
    env = dict(os.environ)
    if args.threads:  # torch's intra-op threads (OpenMP), read when the trainer starts
        env["OMP_NUM_THREADS"] = str(args.threads)
    (out / "bench.json").write_text(json.dumps({"started": time.time(), "minutes": args.minutes, "command": cmd,
                                                "estimator": args.estimator, "seed": args.seed, "commit": commit(),
                                                "machine": _machine(), "threads": args.threads, "init": args.init},
                                               indent=2))
    deadline = time.time() + args.minutes * 60
    with open(out / "train.log", "w") as log, open(out / "load.jsonl", "w") as load:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None and time.time() < deadline:
            load.write(json.dumps({"time": time.time(), "loadavg": os.getloadavg(), "cpu_s": _cpu_seconds(proc.pid)})
                       + "\n")
            load.flush()
            try:
                proc.wait(timeout=min(30.0, max(0.0, deadline - time.time())))
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:  # equal wall time: Ctrl-C (the loop ends its step); what comes later is not counted
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    meta = json.loads((out / "bench.json").read_text())
    (out / "bench.json").write_text(json.dumps({**meta, "exit": proc.returncode}, indent=2))  # -9: killed (the OOM killer?)
    print(f"{args.estimator} seed {args.seed}: {out} (exit {proc.returncode})")


def _cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) the process has used so far, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _machine() -> str:
    """The processor, its core count and the memory, from /proc where there is one."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python " \
        f"{platform.python_version()}"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(folder: Path) -> list[dict]:
    """Each run's held-out points (minutes since its start, rollout, success, reward), training rewards and load
    averages, within its wall-time budget."""
    runs = []
    for meta_path in sorted(folder.glob("*/bench.json")):
        meta = json.loads(meta_path.read_text())
        metrics = meta_path.parent / "metrics.jsonl"
        end = meta["started"] + meta["minutes"] * 60
        rows = [r for r in _rows(metrics) if r["time"] <= end] if metrics.exists() else []
        loads = _rows(meta_path.parent / "load.jsonl") if (meta_path.parent / "load.jsonl").exists() else []
        evals = [{"minute": round((r["time"] - meta["started"]) / 60, 1), "rollout": r["step"],
                  "success": r["eval/unseen_maps/success"], "reward": r["eval/unseen_maps/reward_mean"]}
                 for r in rows if "eval/unseen_maps/success" in r]
        steps = [r for r in rows if "rollout/reward_mean" in r]
        runs.append({**{k: meta[k] for k in ("estimator", "seed", "minutes")}, "folder": meta_path.parent.name,
                     "init": meta.get("init"),
                     "commit": meta.get("commit", "not recorded"), "machine": meta.get("machine", "not recorded"),
                     "command": " ".join(meta["command"][1:]), "threads": meta.get("threads"), "exit": meta.get("exit"),
                     "evals": evals,
                     "train": [{"minute": round((r["time"] - meta["started"]) / 60, 1), "rollout": r["step"],
                                "reward": r["rollout/reward_mean"],
                                "zero_variance_groups": r.get("rollout/zero_variance_groups")} for r in steps],
                     "minutes_run": round((rows[-1]["time"] - meta["started"]) / 60, 1) if rows else 0.0,
                     "started_utc": datetime.datetime.fromtimestamp(meta["started"], datetime.timezone.utc)
                     .strftime("%Y-%m-%d %H:%M"),
                     "load_1min_mean": round(sum(x["loadavg"][0] for x in loads) / len(loads), 2) if loads else None,
                     "load_1min_max": round(max(x["loadavg"][0] for x in loads), 2) if loads else None,
                     "cpu_minutes": round(max((x.get("cpu_s") or 0.0) for x in loads) / 60, 1) if loads else None})
    return runs


def report(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    runs = load(folder)
    if not runs:
        raise SystemExit(f"no runs under {folder}")
    lines = ["| estimator | seed | started (UTC) | torch threads | load avg 1 min, mean / max | CPU minutes | exit | "
             "last point at minute | rollouts | held-out success / reward at minute (rollout) | training reward per rollout |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        held_out = "; ".join(f"{e['success']:.2f} / {e['reward']:+.3f} at {e['minute']:g} ({e['rollout']})"
                             for e in r["evals"])
        train = ", ".join(f"{t['reward']:+.3f}" for t in r["train"])
        lines.append(f"| {r['estimator']} | {r['seed']} | {r['started_utc']} | {r['threads'] or 'default'} | "
                     f"{r['load_1min_mean']} / {r['load_1min_max']} | {r['cpu_minutes']} | {r['exit']} | {r['minutes_run']} | "
                     f"{len(r['train'])} | {held_out} | {train} |")
    commits = sorted({r["commit"] for r in runs})
    meta = {"commit": ", ".join(commits), "machine": "; ".join(sorted({r["machine"] for r in runs})),
            "date": min(r["started_utc"] for r in runs)[:10],
            "command": "; ".join(f"python bench/frozenlake_gigpo.py run --estimator {r['estimator']} --seed {r['seed']} "
                                 f"--minutes {r['minutes']:g}" + (f" --threads {r['threads']}" if r["threads"] else "")
                                 + (f" --init {r['init']}" if r.get("init") else "")
                                 for r in runs)
            + f"; python bench/frozenlake_gigpo.py report {folder} --out {args.out}"
            + (f" --tag {args.tag}" if args.tag else ""),
            "settings": SETTINGS, "estimators": ESTIMATORS}
    header = ["# FrozenLake (random 4x4 maps): GRPO against GiGPO at equal wall time, SmolLM2-135M-Instruct, CPU", "",
              f"- commit: {meta['commit']}", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
              f"- command: `{meta['command']}`", "",
              "Each run's command: " + "; ".join(f"`{r['command']}`" for r in runs), ""]
    md = "\n".join(header + lines) + "\n"
    out = Path(args.out) / ("frozenlake_gigpo_cpu" + (f"_{args.tag}" if args.tag else ""))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({**meta, "runs": runs}, indent=2))
    (out / "report.md").write_text(md)
    for r in runs:
        metrics = folder / r["folder"] / "metrics.jsonl"
        if metrics.exists():
            (out / f"{r['folder']}_metrics.jsonl").write_text(metrics.read_text())
    _plot(runs, out / "curves.png")
    print(md)
    print(f"wrote {out}/: report.md, summary.json, curves.png and each run's metrics")


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"grpo": "tab:blue", "gigpo": "tab:orange"}
    panels = [("evals", "success", "held-out success (greedy, the recipe's 20 unseen maps)"),
              ("evals", "reward", "held-out reward (1 at the goal)"),
              ("train", "reward", "training reward (mean of the rollout)")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (series, key, title) in zip(axes, panels):
        for r in runs:
            points = r[series]
            ax.plot([p["minute"] for p in points], [p[key] for p in points], marker="os^v"[r["seed"] % 4],
                    markersize=4, linestyle=("-", "--", ":", "-.")[r["seed"] % 4], color=colors.get(r["estimator"]),
                    label=f"{r['estimator']} seed {r['seed']}"
                    + (f" (killed; last point at minute {r['minutes_run']:g})" if r.get("exit") == -9 else ""))
        ax.set_xlabel("wall-clock minutes since the run started (2-core CPU)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one estimator for a fixed wall time")
    r.add_argument("--estimator", choices=sorted(ESTIMATORS), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--minutes", type=float, default=30.0)
    r.add_argument("--eval-interval", type=int, default=3)
    r.add_argument("--init", default=None, help="start from this warm-started checkpoint (no warm start in the run)")
    r.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the run (default: torch's own)")
    r.add_argument("--out", default="runs/fl_gigpo")
    r.set_defaults(fn=run)
    rep = sub.add_parser("report", help="plot and tabulate every run under a folder")
    rep.add_argument("folder")
    rep.add_argument("--out", default="bench/results")
    rep.add_argument("--tag", default="", help="results folder frozenlake_gigpo_cpu_<tag>")
    rep.set_defaults(fn=report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
