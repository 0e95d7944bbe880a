"""Resume is exact: 4 rollouts straight and 2 + resume + 2 give bit-identical weights and metrics.

Episodes run one at a time here (``--rollout-concurrency 1``): with several in flight, which
requests share an engine step depends on timing, and batched matmuls round differently in the
last bits, so the engine's logprobs (``train/rollout_train_*`` metrics only; sampled tokens,
rewards, weights and every other metric stay equal) can differ by ~1e-7 between runs.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from agentrl.config import parse_args
from agentrl.loop import train

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "4",
        "--rollout-batch-size", "2", "--n-samples-per-prompt", "4", "--rollout-max-response-len", "8",
        "--lr", "1e-3", "--eval-prompt-data", "sums", "recipes/quickstart/test.jsonl", "--eval-max-prompts", "3",
        "--eval-interval", "2", "--save-interval", "2", "--lr-decay-style", "cosine", "--engine-max-batch-size", "8",
        "--custom-rm-path", "tests/_resume_reward.py:reward", "--rollout-concurrency", "1"]
TIMING = ("perf/", "rollout/time", "rollout/tokens_per_s", "rollout/time_",
          "engine/")  # engine counters run since the engine started: a resumed run starts a new one


def _metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k != "time" and not k.startswith(TIMING)} for r in rows}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "model" / "model.safetensors")


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(parse_args([*ARGS, "--output-dir", str(straight), "--save", str(straight / "ckpt")]))
    # the resumed run starts from the straight run's checkpoint after 2 rollouts
    train(parse_args([*ARGS, "--output-dir", str(resumed), "--save", str(resumed / "ckpt"),
                      "--load", str(straight / "ckpt" / "rollout_00002")]))
    a, b = _weights(straight / "ckpt" / "rollout_00004"), _weights(resumed / "ckpt" / "rollout_00004")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma, mb = _metrics(straight), _metrics(resumed)
    assert sorted(mb) == [3, 4]
    for step in (3, 4):
        diff = {k: (ma[step].get(k), mb[step].get(k)) for k in ma[step].keys() | mb[step].keys()
                if ma[step].get(k) != mb[step].get(k)}
        assert not diff, (step, diff)
    # and training did move the weights
    start = _weights(straight / "ckpt" / "rollout_00002")
    assert any(not torch.equal(start[n], a[n]) for n in a)


def test_eval_interval_0_never_evaluates(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    args = ARGS[:ARGS.index("--eval-prompt-data")] + ["--num-rollout", "1", "--eval-interval", "0"]
    train(parse_args([*args, "--output-dir", str(out), "--save", str(out / "ckpt")]))  # the quickstart config names a held-out set
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "rollout/reward_mean" in rows[0]
    assert not [k for r in rows for k in r if k.startswith("eval/")]
    # and with an interval the same run evaluates before the first rollout and after the last
    train(parse_args([*args[:-2], "--eval-max-prompts", "2", "--output-dir", str(tmp_path / "evald"),
                      "--save", str(tmp_path / "evald" / "ckpt")]))
    rows = [json.loads(line) for line in (tmp_path / "evald" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if any(k.startswith("eval/") for k in r)] == [0, 1]
