"""Placement plans and the validation of the cluster and async flags (no Ray needed)."""

import importlib.util

import pytest

from agentrl.cluster import placement
from agentrl.cluster.placement import plan_placement
from agentrl.config import ConfigError, parse_args, validate

BASE = ["--env", "Echo-v0", "--prompt-data", "recipes/quickstart/train.jsonl", "--model-path", "tiny-qwen2"]


def test_plans():
    cpu = plan_placement(2, colocate=True, use_gpu=False, cpus_per_actor=0.5)
    assert cpu.bundles == [{"CPU": 0.5}] * 3 and not cpu.colocate and cpu.engine_bundles == [1, 2]
    tp = plan_placement(2, 4, colocate=False, use_gpu=True)
    assert [b["GPU"] for b in tp.bundles] == [1.0, 4.0, 4.0] and tp.engine_gpus == 4.0
    shared = plan_placement(1, colocate=True, use_gpu=True)
    assert shared.bundles == [{"GPU": 1.0, "CPU": 2.0}] and shared.engine_bundles == [0]
    assert shared.trainer_gpus + shared.engine_gpus == 1.0
    with pytest.raises(ValueError, match="--no-colocate"):
        plan_placement(2, colocate=True, use_gpu=True)


def test_flags_parse_and_validate(monkeypatch):
    monkeypatch.chdir(placement.__file__.rsplit("/agentrl/", 1)[0])
    cfg = parse_args([*BASE, "--use-ray", "--num-engines", "3", "--max-staleness", "1", "--no-partial-rollouts",
                      "--ray-address", "auto", "--ray-weight-sync", "nccl", "--engine-health-interval", "5"])
    assert (cfg.cluster.num_engines, cfg.asynchrony.max_staleness, cfg.asynchrony.partial_rollouts, cfg.cluster.ray_weight_sync) == (3, 1, False, "nccl")
    assert validate(cfg) == []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    assert validate(cfg) == ["Ray is not installed, and --use-ray (or a trainer of several ranks) runs engines and "
                             "ranks as Ray actors: pip install 'agentrl[ray]'"]
    problems = "\n".join(validate(parse_args([*BASE, "--num-engines", "2", "--max-staleness", "-1"])))
    assert "--num-engines 2 needs --use-ray" in problems
    assert "--max-staleness must be >= 0" in problems
    with pytest.raises(ConfigError, match="did you mean 'nccl'"):
        parse_args([*BASE, "--ray-weight-sync", "ncl"])


def test_trainer_sms_needs_overlap_and_an_in_process_trainer(monkeypatch):
    monkeypatch.chdir(placement.__file__.rsplit("/agentrl/", 1)[0])
    assert parse_args([*BASE, "--max-staleness", "1", "--trainer-sms", "88"]).asynchrony.trainer_sms == 88
    assert validate(parse_args([*BASE, "--max-staleness", "1", "--trainer-sms", "88", "--device", "cuda:0"])) == []
    on_cpu = validate(parse_args([*BASE, "--max-staleness", "1", "--trainer-sms", "88", "--device", "cpu"]))
    assert on_cpu == ["--trainer-sms confines the trainer's kernels to part of its CUDA GPU; the trainer runs on cpu here"]
    monkeypatch.setattr("agentrl.config._cuda_available", lambda: False)
    assert "runs on the CPU here" in "\n".join(validate(parse_args([*BASE, "--max-staleness", "1", "--trainer-sms", "8"])))
    assert validate(parse_args([*BASE, "--trainer-sms", "0", "--max-staleness", "1"])) == ["--trainer-sms must be >= 1; got 0"]
    assert "needs --max-staleness >= 1" in "\n".join(validate(parse_args([*BASE, "--trainer-sms", "88"])))
    ray = validate(parse_args([*BASE, "--trainer-sms", "88", "--max-staleness", "1", "--use-ray"]))
    assert any("with --use-ray the trainer runs in its own actor" in p for p in ray)


def test_in_flight_weight_updates_need_overlap_and_the_embedded_engine(monkeypatch):
    monkeypatch.chdir(placement.__file__.rsplit("/agentrl/", 1)[0])
    cfg = parse_args([*BASE, "--max-staleness", "1", "--in-flight-weight-updates"])
    assert cfg.asynchrony.in_flight_weight_updates and validate(cfg) == []
    assert "needs --max-staleness >= 1" in "\n".join(validate(parse_args([*BASE, "--in-flight-weight-updates"])))
    sglang = validate(parse_args([*BASE, "--max-staleness", "1", "--in-flight-weight-updates", "--engine", "sglang",
                                  "--sglang-url", "http://localhost:30000"]))
    assert any("loads weights between decode steps" in p for p in sglang)


def test_next_rollout_at_is_a_fraction(monkeypatch):
    monkeypatch.chdir(placement.__file__.rsplit("/agentrl/", 1)[0])
    assert parse_args(BASE).asynchrony.next_rollout_at == 0.0  # once the previous rollout has finished
    cfg = parse_args([*BASE, "--max-staleness", "1", "--next-rollout-at", "0.25"])
    assert cfg.asynchrony.next_rollout_at == 0.25 and validate(cfg) == []
    assert validate(parse_args([*BASE, "--next-rollout-at", "1.5"])) == [
        "--next-rollout-at is a fraction of a rollout's episodes, in [0, 1]; got 1.5"]
