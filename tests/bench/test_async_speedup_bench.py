"""bench/async_speedup.py end to end on a tiny model (CPU): the files it writes and what they hold."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_async_speedup_bench_writes_its_table_and_a_timeline_per_mode(tmp_path):
    out = subprocess.run([sys.executable, "bench/async_speedup.py", "--shape", "tiny", "--batch", "2", "--samples", "2",
                          "--turns", "2", "--min-len", "4", "--max-len", "16", "--rollouts", "3", "--warmup", "1",
                          "--modes", "sync,async", "--next-rollout-at", "1,0", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = tmp_path.glob("async_speedup_*.json")
    data = json.loads(result.read_text())
    assert list(data["modes"]) == ["sync", "async@1", "async@0"]
    for name, mode in data["modes"].items():
        assert len(mode["step_s_each"]) == 2 and mode["step_s"] > 0 and mode["generated_tokens"] > 0
        assert [r["end_s"] for r in mode["timeline"]] == sorted(r["end_s"] for r in mode["timeline"])
        assert len(mode["timeline"]) == 3 and all("perf/train_time" in r for r in mode["timeline"])
        assert all(("async/generate_s" in r) == (name != "sync") for r in mode["timeline"])
        assert any("embedded engine" in line for line in mode["engine"])
    assert data["meta"]["next_rollout_at"] == "1,0" and data["meta"]["episodes_per_rollout"] == 4
    table = result.with_suffix(".md").read_text()
    assert "| sync | " in table and "| async@0 | " in table and "--next-rollout-at 1,0" in table
