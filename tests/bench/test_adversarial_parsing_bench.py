"""bench/adversarial_parsing.py: the table it writes, and (slow) the bound it checks on every row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, *args):
    out = subprocess.run([sys.executable, "bench/adversarial_parsing.py", "--out", str(tmp_path), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    (result,) = tmp_path.glob("adversarial_parsing_*.json")
    return out, json.loads(result.read_text())


def test_the_bench_writes_a_row_per_target_and_input(tmp_path):
    out, data = run(tmp_path, "--envs", "Echo-v0", "Search-v0", "--inputs", "whitespace", "unclosed tags",
                    "--repeats", "1")
    assert out.returncode in (0, 1), out.stderr[-3000:]
    targets = [(r["target"], r["input"]) for r in data["rows"]]
    assert targets == [(t, i) for t in ("HermesParser", "TagParser(search, python)", "Echo-v0", "Search-v0")
                       for i in ("unclosed tags", "whitespace")]
    assert all(r["chars"] == 1 << 20 and r["wall_ms"] >= 0 for r in data["rows"])
    assert data["meta"]["bound_ms"] == 100 and data["meta"]["machine"]["cpu_count"]
    assert "| Search-v0 | whitespace | 1,048,576 |" in (tmp_path / "adversarial_parsing_cpu.md").read_text()


@pytest.mark.slow
def test_every_parser_and_environment_holds_the_event_loop_under_100_ms_on_a_megabyte(tmp_path):
    out, data = run(tmp_path)
    over = [(r["target"], r["input"], round(r["loop_ms"], 1)) for r in data["rows"] if r["loop_ms"] >= 100]
    assert out.returncode == 0 and not over, (over, out.stderr[-2000:])
    assert {r["target"] for r in data["rows"]} >= {"Math-v0", "GSM8K-v0", "ReasoningGym-v0", "Search-v0", "ToolUse-v0",
                                                  "FrozenLake-v0", "Taxi-v0", "Blackjack-v0", "CliffWalking-v0",
                                                  "Echo-v0", "HermesParser"}
