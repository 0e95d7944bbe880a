"""Every long phase of a run shows a bar: the rollouts and each held-out evaluation; the rollouts bar names what
the step is doing."""

from pathlib import Path

from agentrl.config import parse_args
from agentrl.loop import train

ROOT = Path(__file__).resolve().parents[1]


def test_training_shows_bars_for_rollouts_and_held_out_evaluations(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "1",
                      "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4",
                      "--eval-max-prompts", "3", "--engine-max-batch-size", "4", "--output-dir", str(out),
                      "--entropy-coef", "0.001",  # a step trains even when every reward is equal
                      "--save", str(out / "ckpt")]))
    err = capsys.readouterr().err
    # before the first rollout and after the last (the bar clears itself when done: leave=False)
    assert err.count("held-out eval:   0%|") == 2 and "0/3 [" in err
    assert "rollouts: 100%" in err and "1/1 [" in err
    phases = [p for p in ("generating", "logprobs", "training", "syncing weights", "saving") if f"rollouts ({p}):" in err]
    assert phases == ["generating", "logprobs", "training", "syncing weights", "saving"]
    order = [err.index(f"rollouts ({p}):") for p in phases]
    assert order == sorted(order) and order[-1] < err.index("rollouts: 100%")
