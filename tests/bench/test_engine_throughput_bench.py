"""bench/engine_throughput.py end to end on a tiny model (CPU): both systems timed, ratios written."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_throughput_bench_times_each_system_and_writes_ratios(tmp_path):
    out_json = tmp_path / "engine.json"
    out = subprocess.run([sys.executable, "bench/engine_throughput.py", "--model", "tiny-qwen2", "--device", "cpu",
                          "--batches", "1,2", "--prompt-len", "8", "--new-tokens", "8", "--systems", "engine,hf",
                          "--repeats", "1", "--out", str(out_json)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out_json.read_text())
    rows = {(r["system"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {("engine", 1), ("engine", 2), ("hf", 1), ("hf", 2)}
    assert all(r["tok_s"] > 0 and r["seconds"] > 0 for r in rows.values())
    for batch in (1, 2):  # each ratio is the two systems' tokens/s of that batch
        ratio = rows["engine", batch]["tok_s"] / rows["hf", batch]["tok_s"]
        assert abs(data["ratios"][f"engine / hf @ batch {batch}"] - ratio) < 1e-3 * ratio
    assert "engine / hf @ batch 2" in out_json.with_suffix(".md").read_text()
