"""``--trainer megatron`` through the training loop: rollouts on the embedded engine, Megatron train
steps, weights pushed to the engine after every step, a checkpoint (CPU with the shim)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--trainer", "megatron",
       "--num-rollout", "3", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--num-steps-per-rollout", "1",
       "--global-batch-size", "4", "--rollout-max-response-len", "8", "--eval-max-prompts", "2", "--eval-interval", "3",
       "--max-tokens-per-gpu", "2048", "--lr", "1e-2", "--engine-max-batch-size", "8", "--no-gradient-checkpointing",
       "--no-dynamic-sampling", "--entropy-coef", "0.1"]


@pytest.mark.slow
def test_three_grpo_rollouts_with_the_megatron_trainer(parallel, tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the CPU variant; on GPUs see test_megatron_gpu.py")
    from agentrl.config import parse_args, validate
    from agentrl.loop import train

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    cfg = parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt")])
    assert validate(cfg) == []
    assert train(cfg)["rollouts"] == 3
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert len(steps) == 3
    # the entropy bonus moves the weights every step; the engine samples with the pushed weights,
    # so its logprobs equal the trainer's (float32 on the CPU) at every rollout
    assert all(s["train/grad_norm"] > 0 for s in steps)
    assert all(s["train/rollout_train_abs_diff"] < 1e-4 for s in steps), [s["train/rollout_train_abs_diff"] for s in steps]
    assert (out / "ckpt" / "rollout_00003" / "model" / "config.json").exists()


def test_megatron_flags_reach_the_trainer(monkeypatch):
    import agentrl.train.megatron as megatron_pkg
    from agentrl.components import build_trainer
    from agentrl.config import ConfigError, parse_args, validate

    seen = {}

    class Recorder:
        def __init__(self, model, config, megatron, **kw):
            seen.update(megatron=megatron, kw=kw)

    monkeypatch.setattr(megatron_pkg, "MegatronTrainer", Recorder)
    cfg = parse_args(["--trainer", "megatron", "--attention-backend", "sdpa", "--recompute-granularity", "selective",
                      "--megatron-fusions"])
    build_trainer(cfg)
    m = seen["megatron"]
    assert (m.attention, m.recompute, m.fusions) == ("sdpa", "selective", True)
    with pytest.raises(ConfigError) as bad:  # values outside the choices: every one named, before anything loads
        parse_args(["--attention-backend", "flash", "--recompute-granularity", "some"])
    assert [p.split(":")[0] for p in bad.value.problems] == ["--attention-backend", "--recompute-granularity"]
    assert not [p for p in validate(cfg) if "--attention-backend" in p or "--recompute" in p or "fusions" in p]


@pytest.mark.slow
def test_a_warm_start_with_the_megatron_trainer(parallel, tmp_path, monkeypatch):
    """The supervised warm start (--sft-data) runs through the Megatron trainer's own train_step and saves a
    checkpoint RL can --load (tests/train/test_sft.py covers the exact resume with the torch trainer)."""
    if torch.cuda.is_available():
        pytest.skip("the CPU variant")
    from agentrl.config import parse_args, validate
    from agentrl.loop import train

    monkeypatch.chdir(ROOT)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+{a}?"},
                                                      {"role": "assistant", "content": str(2 * a)}]}) + "\n"
                             for a in range(8)))
    out = tmp_path / "run"
    cfg = parse_args([*TOY, "--num-rollout", "0", "--sft-data", str(demos), "--sft-epochs", "2", "--sft-batch-size", "4",
                      "--eval-interval", "0", "--output-dir", str(out), "--save", str(out / "ckpt")])
    assert validate(cfg) == []
    assert train(cfg)["rollouts"] == 0
    (sft,) = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "sft/steps" in r]
    assert sft["sft/steps"] == 4 and sft["sft/demos"] == 8
    assert (out / "ckpt" / "latest").read_text() == "rollout_00000"
    assert (out / "ckpt" / "rollout_00000" / "model" / "config.json").exists()
