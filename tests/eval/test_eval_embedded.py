"""agentrl eval through the real command and the embedded engine (tiny random model)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agentrl.cli import main as agentrl_main

ROOT = Path(__file__).resolve().parents[2]


def test_agentrl_eval_with_the_embedded_engine(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model-path", "tiny-qwen2", "--task", "echo=Echo-v0", "--task", "lake=FrozenLake-v0",
            "--eval-max-prompts", "2", "--n-samples-per-eval-prompt", "2", "--k", "1,2", "--max-turns", "2", "--rollout-max-response-len", "4",
            "--output-dir", str(out)]
    assert agentrl_main(argv) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[1].split()[:4] == ["task", "n", "avg@2", "pass@1"] and "overall" in text
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert Counter(e["task"] for e in episodes) == {"echo": 4, "lake": 4}
    assert all(e["generated_tokens"] <= 8 and e["status"] in ("ok", "truncated") for e in episodes)
    for name in ("run.json", "summary.json", "report.md", "chart_echo.png", "chart_lake.png", "chart_overview.png"):
        assert (out / name).exists(), name
    # the same command again: nothing left to run, same numbers
    before = json.loads((out / "summary.json").read_text())["tasks"]
    assert agentrl_main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["tasks"] == before
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 8


@pytest.mark.slow
def test_sigkill_half_way_then_the_same_command_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "agentrl.cli", "eval", "--model-path", "tiny-qwen2", "--task",
           "lake=FrozenLake-v0,random_map_size=4", "--eval-max-prompts", "12", "--n-samples-per-eval-prompt", "2", "--rollout-concurrency", "2",
           "--max-turns", "6", "--rollout-max-response-len", "8", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    episodes = out / "episodes.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if episodes.exists() and len(episodes.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed; raise --limit"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = episodes.read_text().splitlines()
    kept_before = [json.loads(line) for line in lines[:-1]]  # the last line may be cut off
    assert 0 < len(kept_before) < 24
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    final = [json.loads(line) for line in episodes.read_text().splitlines()]
    counts = Counter((e["row"], e["sample_index"]) for e in final)
    assert len(counts) == 24 and set(counts.values()) == {1}
    # the episodes finished before the kill are there unchanged, not run again
    by_key = {(e["row"], e["sample_index"]): e for e in final}
    complete = Counter(e["row"] for e in kept_before)
    for e in kept_before:
        if complete[e["row"]] == 2:
            assert by_key[(e["row"], e["sample_index"])]["response_ids"] == e["response_ids"]
