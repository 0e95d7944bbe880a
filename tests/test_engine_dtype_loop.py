"""``--engine-dtype bfloat16`` with a float32 trainer on the CPU: rollouts come from a bf16 copy of the
weights, every sync refreshes it, and TIS sees the (larger) rollout/train logprob gap."""

import json
import math
from pathlib import Path

from agentrl.config import parse_args
from agentrl.loop import train

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "2",
        "--rollout-batch-size", "2", "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8",
        "--lr", "1e-3", "--eval-max-prompts", "1", "--engine-max-batch-size", "8", "--use-tis",
        "--custom-rm-path", "tests/_resume_reward.py:reward"]


def _steps(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "perf/step_time" in r]


def test_bf16_engine_with_a_float32_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    train(parse_args([*ARGS, "--output-dir", str(tmp_path / "f32"), "--save", str(tmp_path / "f32" / "ckpt")]))
    train(parse_args([*ARGS, "--output-dir", str(tmp_path / "bf16"), "--save", str(tmp_path / "bf16" / "ckpt"),
                      "--engine-dtype", "bfloat16"]))
    f32, bf16 = _steps(tmp_path / "f32"), _steps(tmp_path / "bf16")
    assert [r["perf/weight_version"] for r in bf16] == [1, 2]
    for a, b in zip(f32, bf16):
        gap_f32, gap_bf16 = a["train/rollout_train_abs_diff"], b["train/rollout_train_abs_diff"]
        assert math.isfinite(gap_bf16) and gap_bf16 > 10 * gap_f32  # bf16 rounding, not float32's last bits
        assert gap_bf16 < 0.1  # but the same model: the engine got the trainer's weights
        assert "train/tis_weight_mean" in b
