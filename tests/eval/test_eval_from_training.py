"""``agentrl eval`` of a training checkpoint scores it as the training run's own evaluation did."""

import json
from pathlib import Path

import pytest

from agentrl.config import parse_args as train_args
from agentrl.eval.cli import main, parse_args
from agentrl.eval.from_training import checkpoint_of, resolve
from agentrl.loop import train

ROOT = Path(__file__).resolve().parents[2]
TOY = ["--model-path", "tiny-qwen2", "--num-rollout", "2", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
       "--rollout-max-response-len", "8", "--eval-max-prompts", "3", "--eval-interval", "2", "--lr", "1e-3",
       "--engine-max-batch-size", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-rollout quickstart run on the tiny model, evaluated after its last rollout."""
    import os

    out = tmp_path_factory.mktemp("qs")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        train(train_args(["--config", "recipes/quickstart/config.yaml", *TOY, "--output-dir", str(out),
                          "--save", str(out / "ckpt")]))
    finally:
        os.chdir(cwd)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = {k.split("/")[-1]: v for k, v in rows[-1].items() if k.startswith("eval/sums/")}
    assert last, rows[-1]
    return out, last


def _eval(tmp_path, monkeypatch, *argv):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "eval"
    assert main([*argv, "--output-dir", str(out), "--no-plots"]) == 0
    return json.loads((out / "summary.json").read_text()), out


def test_a_checkpoint_is_scored_as_its_training_run_scored_it(trained, tmp_path, monkeypatch):
    run, training_eval = trained
    summary, out = _eval(tmp_path, monkeypatch, "--model-path", str(run / "ckpt"))  # the latest checkpoint
    got = summary["tasks"]["sums"]
    for key in ("reward_mean", "success", "generated_tokens_mean", "prompt_tokens_mean", "turns_mean"):
        assert got[key] == training_eval[key], key
    assert got["prompts"] == 3  # the run's --eval-max-prompts
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["env_kwargs"]["prompt_template"] == "{question} Answer with just the number."
    assert settings["model_path"].endswith("rollout_00002/model")


def test_recipe_config_with_the_checkpoint_model_scores_the_same(trained, tmp_path, monkeypatch):
    run, training_eval = trained
    summary, _ = _eval(tmp_path, monkeypatch, "--config", "recipes/quickstart/config.yaml",
                       "--model-path", str(run / "ckpt" / "rollout_00002" / "model"), "--eval-max-prompts", "3",
                       "--rollout-max-response-len", "8")  # the toy run's, not the recipe's 32
    assert summary["tasks"]["sums"]["generated_tokens_mean"] == training_eval["generated_tokens_mean"]
    assert summary["tasks"]["sums"]["reward_mean"] == training_eval["reward_mean"]


def test_flags_override_the_training_config(tmp_path):
    args, cfg = resolve(parse_args(["--config", "recipes/quickstart/config.yaml", "--rollout-max-response-len", "7",
                                    "--n-samples-per-eval-prompt", "2", "--eval-temperature", "0.5"]))
    assert (args.max_response_len, args.n_samples, args.temperature) == (7, 2, 0.5)
    assert args.max_context_len == cfg.rollout.max_context_tokens == 128  # not given: the recipe's
    assert args.episode_timeout == cfg.rollout.episode_timeout  # as training's own evaluations (--episode-timeout)
    assert args.k == "1"  # the recipe evaluates one sample per prompt: pass@1


def test_checkpoint_of(tmp_path):
    ckpt = tmp_path / "save" / "rollout_00004"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "save" / "latest").write_text("rollout_00004")
    assert checkpoint_of(str(ckpt)) == ckpt
    assert checkpoint_of(str(ckpt / "model")) == ckpt
    assert checkpoint_of(str(tmp_path / "save")) == ckpt
    assert checkpoint_of("smollm2-135m-instruct") is None
    assert checkpoint_of(str(tmp_path)) is None


def test_a_checkpoint_or_save_folder_is_a_model_path_for_training_too(tmp_path):
    """train.py --model-path takes what agentrl eval takes: a checkpoint, its model folder, or a --save folder."""
    from agentrl.models import ModelNotFoundError, resolve_model_path

    ckpt = tmp_path / "save" / "rollout_00004"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "save" / "latest").write_text("rollout_00004")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):  # a checkpoint without its model
        resolve_model_path(tmp_path / "save")
    (ckpt / "model" / "config.json").write_text("{}")
    for path in (tmp_path / "save", ckpt, ckpt / "model"):
        assert resolve_model_path(path) == str(ckpt / "model")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model_path(tmp_path)


def test_a_config_without_held_out_sets_says_what_to_give(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("env: agentrl/Echo-v0\nprompt-data: x.jsonl\n")
    assert main(["--config", str(recipe), "--output-dir", str(tmp_path / "e")]) == 2
    assert "names no held-out sets" in capsys.readouterr().err
