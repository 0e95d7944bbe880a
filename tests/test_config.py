import subprocess
import sys

import pytest
import torch

from agentrl.config import TABLE, ConfigError, build_parser, parse_args, to_dict, validate


def test_slime_flag_names_exist():
    for flag in ["--prompt-data", "--input-key", "--label-key", "--rollout-batch-size", "--n-samples-per-prompt",
                 "--global-batch-size", "--num-rollout", "--num-steps-per-rollout", "--advantage-estimator",
                 "--use-kl-loss", "--kl-loss-coef", "--kl-loss-type", "--eps-clip", "--eps-clip-high", "--use-tis",
                 "--max-turns", "--eval-prompt-data", "--eval-interval", "--save-interval", "--save", "--load",
                 "--custom-generate-function-path", "--custom-rm-path", "--colocate", "--env", "--model-path",
                 "--trainer", "--engine", "--apply-chat-template"]:
        assert flag in TABLE.by_name, flag


def test_every_flag_has_help():
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help",):
            assert action.help and len(action.help) > 10, action.option_strings


def test_derived_values_and_overrides(tmp_path):
    cfg = parse_args(["--rollout-batch-size", "4", "--n-samples-per-prompt", "8", "--num-steps-per-rollout", "2",
                      "--advantage-estimator", "gae", "--rollout-temperature", "0.7"])
    assert cfg.global_batch_size == 16 and cfg.train.use_critic and cfg.train.rollout_temperature == 0.7
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout-batch-size: 2\nn_samples_per_prompt: 4\nlr: 3.0e-5\nuse-kl-loss: true\n")
    cfg = parse_args(["--config", str(recipe), "--rollout-batch-size", "6"])
    assert cfg.rollout_batch_size == 6 and cfg.rollout.n_samples_per_prompt == 4
    assert cfg.train.lr == 3e-5 and cfg.train.use_kl_loss is True
    back = to_dict(cfg)
    assert back["rollout-batch-size"] == 6 and back["lr"] == 3e-5


def test_a_config_file_that_is_not_yaml_is_one_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match=r"--config .*bad.yaml: not valid YAML: .*line 2, column 1"):
        parse_args(["--config", str(bad)])


def test_load_must_name_a_checkpoint(tmp_path):
    problems = validate(parse_args(["--load", str(tmp_path)]))
    assert f"--load: {tmp_path} holds no checkpoint (no state.json, and no rollout_* folder with one)" in problems
    assert f"--load {tmp_path / 'x'}: no such checkpoint folder" in validate(parse_args(["--load", str(tmp_path / "x")]))


def test_unknown_config_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rollout-bach-size: 2\n")
    with pytest.raises(ConfigError, match="unknown key 'rollout-bach-size'.*--rollout-batch-size"):
        parse_args(["--config", str(recipe)])


def test_sglang_flags_pass_through():
    cfg = parse_args(["--sglang-mem-fraction-static", "0.7", "--sglang-enable-torch-compile", "--seed", "3"])
    assert cfg.engine.sglang_args == ["--mem-fraction-static", "0.7", "--enable-torch-compile"] and cfg.seed == 3


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as bad_values:  # values that do not fit their field: reported together
        parse_args(["--overlong", "drop", "--lr", "fast", "--trainer", "torhc"])
    assert [p.split(":")[0] for p in bad_values.value.problems] == ["--overlong", "--lr", "--trainer"]
    assert "did you mean 'torch'" in str(bad_values.value)
    cfg = parse_args(["--env", "Eko-v0", "--rollout-batch-size", "3", "--n-samples-per-prompt", "3",
                      "--global-batch-size", "4", "--kl-loss-type", "k4", "--use-kl-loss",
                      "--model-path", str(tmp_path / "missing-model"), "--prompt-data", str(tmp_path / "no.jsonl"),
                      "--eval-prompt-data", "only-a-name", "--save-interval", "2",
                      "--custom-rm-path", str(tmp_path / "rm.py") + ":reward", "--custom-generate-function-path",
                      "agentrl.rollout:run_episode"])
    problems = validate(cfg)
    assert f"--custom-rm-path '{tmp_path / 'rm.py'}:reward': no such file {tmp_path / 'rm.py'}" in problems
    assert not [p for p in problems if "--custom-generate-function-path" in p]  # a module: imported when used
    text = "\n".join(problems)
    for needle in ["must equal --global-batch-size", "set --global-batch-size 9", "unknown KL estimator 'k4'",
                   "--kl-loss-coef is 0", "--prompt-data", "no such file",
                   "did you mean 'agentrl/Echo-v0'", "--model-path", "NAME PATH pairs", "--save-interval needs --save"]:
        assert needle in text, (needle, text)


def test_turn_level_and_retry_flags_are_checked():
    cfg = parse_args(["--advantage-estimator", "reinforce_plus_plus", "--turn-baseline", "--max-episode-retries", "-1"])
    text = "\n".join(validate(cfg))
    assert "--turn-baseline is for dr_grpo, grpo, rloo; --advantage-estimator reinforce_plus_plus" in text
    assert "--max-episode-retries must be >= 0; got -1" in text
    cfg = parse_args(["--advantage-estimator", "gigpo", "--n-samples-per-prompt", "1"])
    assert any("gigpo compares episodes of the same prompt" in p for p in validate(cfg))
    cfg = parse_args(["--advantage-estimator", "rloo", "--turn-baseline", "--policy-loss", "cispo", "--gamma", "0.95"])
    assert (cfg.algo.turn_baseline, cfg.rollout.max_episode_retries, cfg.train.policy_loss) == (True, 2, "cispo")
    assert not [p for p in validate(cfg) if "turn" in p or "policy loss" in p]


def test_train_py_reports_problems_before_loading_anything(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--rollout-batch-size", "0", "--env", "Nope-v0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--rollout-batch-size must be >= 1" in out.stderr and "'Nope-v0' is not registered" in out.stderr
    assert "Loading" not in out.stderr  # nothing was loaded
    helped = subprocess.run([sys.executable, "train.py", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--n-samples-per-prompt" in helped.stdout and "Episodes per prompt" in helped.stdout


def test_train_py_reports_a_bad_data_row_in_one_line(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "1+1?", "label": "2"}\nnot json\n')
    out = subprocess.run([sys.executable, "train.py", "--prompt-data", str(data), "--env", "agentrl/Echo-v0",
                          "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"train.py: {data}:2: invalid JSON" in out.stderr and "--skip-bad-rows" in out.stderr


def test_engine_device_is_checked():
    problems = "\n".join(validate(parse_args(["--engine-device", "tpu:0", "--engine-admit-wait-steps", "-1"])))
    assert "--engine-admit-wait-steps must be >= 0; got -1" in problems
    assert "--engine-device must be cpu, cuda or cuda:N; got 'tpu:0'" in problems
    problems = "\n".join(validate(parse_args(["--engine-device", "cuda:1", "--use-ray"])))
    assert "--engine-device places the in-process embedded engine" in problems
    assert "--engine-device" not in "\n".join(validate(parse_args(["--engine-device", "cuda:1"])))


def test_engine_dtype_is_checked_and_sets_the_embedded_engine(tmp_path):
    from agentrl.components import build_engine
    from agentrl.testing import make_tiny_model

    with pytest.raises(ConfigError, match="--engine-dtype: expected one of float32, bfloat16, float16; got 'int8'"):
        parse_args(["--engine-dtype", "int8"])
    problems = "\n".join(validate(parse_args(["--engine-dtype", "bfloat16", "--engine", "sglang",
                                                "--sglang-url", "http://x:1"])))
    assert "SGLang servers take --sglang-dtype" in problems

    class Trainer:
        device = "cpu"
        tokenizer = None

    model = make_tiny_model(tmp_path / "m", "qwen2")
    engine = build_engine(parse_args(["--model-path", str(model), "--engine-dtype", "bfloat16"]), Trainer())
    assert engine.dtype == torch.bfloat16 and engine.backend == "fast"
    default = build_engine(parse_args(["--model-path", str(model)]), Trainer())
    assert default.dtype == torch.float32 and not default.config.high_priority_stream
    assert build_engine(parse_args(["--model-path", str(model), "--engine-high-priority-stream"]),
                        Trainer()).config.high_priority_stream
    assert default.config.pack_weights  # the CPU default
    assert not build_engine(parse_args(["--model-path", str(model), "--no-engine-pack-weights"]),
                            Trainer()).config.pack_weights


def test_engine_device_places_the_embedded_engine(tmp_path):
    from agentrl.components import build_engine
    from agentrl.testing import make_tiny_model

    model = make_tiny_model(tmp_path / "m", "qwen2")

    class Trainer:
        device = "meta"  # never used: --engine-device wins
        tokenizer = None

    engine = build_engine(parse_args(["--model-path", str(model), "--engine-device", "cpu"]), Trainer())
    assert engine.device.type == "cpu"


def test_output_folders_that_cannot_be_created_stop_the_run_before_it_loads_anything(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from agentrl.train_cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2",
                 "--output-dir", str(tmp_path / "run"), "--save", str(blocker / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and f"--save {blocker / 'ckpt'}: cannot create it (Not a directory)" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and "Loading" not in err
