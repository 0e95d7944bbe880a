"""A recorded quickstart-shaped run with rollout dumps, shared by the viewer's tests.

The quickstart recipe at toy scale (tiny model, 2 rollouts of 2 prompts x 2 samples, evaluations
before, between and after) with ``--save-debug-rollout-data`` and a reward function that fails the
second episode of each group, so the run has failed episodes."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--model-path", "tiny-qwen2", "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
       "--num-steps-per-rollout", "1", "--global-batch-size", "4", "--rollout-max-response-len", "8",
       "--eval-max-prompts", "2", "--eval-interval", "1", "--max-tokens-per-gpu", "2048", "--lr", "1e-3",
       "--engine-max-batch-size", "8", "--no-gradient-checkpointing", "--no-dynamic-sampling",
       "--entropy-coef", "0.01"]  # each group's one scored episode has advantage 0: the entropy term still trains


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory) -> Path:
    import os

    from agentrl.config import parse_args
    from agentrl.loop import train

    out = tmp_path_factory.mktemp("view") / "run"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        cfg = parse_args(["--config", "recipes/quickstart/config.yaml", *TOY, "--output-dir", str(out),
                          "--save", str(out / "ckpt"), "--save-debug-rollout-data",
                          "--custom-rm-path", "tests/view/_flaky_reward.py:reward"])
        train(cfg)
    finally:
        os.chdir(cwd)
    return out
