"""What a new user may feed the command line and a --config file: every bad value is one line naming its flag
(exit 2, nothing loaded), in training, evaluation and serving alike."""

import json

import pytest

from agentrl.config import TABLE as TRAIN
from agentrl.engine._server_run import TABLE as SERVE
from agentrl.eval.cli import TABLE as EVAL
from agentrl.train_cli import main as train_main
from agentrl.utils.flags import field_type


def _float_flags(table):
    out = []
    for flag in table.flags:
        kind, choices = field_type(*table.owner(flag.path))
        if kind is float and not choices and flag.const is not None:
            out.append(flag.name)
    return out


@pytest.mark.parametrize("table", [TRAIN, EVAL, SERVE], ids=["train", "eval", "serve"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_no_number_flag_takes_nan_or_infinity(table, value):
    flags = _float_flags(table)
    assert flags
    for name in flags:
        _, _, problems = table.parse([f"{name}={value}"], config_file=False)
        assert problems == [f"{name}: expected a finite number, got {float(value)}"], name


def test_nor_does_a_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("lr: .inf\neps-clip: .nan\nrollout-temperature: '1e400'\n")
    cfg = TRAIN.root()
    problems = TRAIN.apply_file(cfg, config)
    assert len(problems) == 3 and all("expected a finite number" in p for p in problems), problems
    assert cfg.train.lr == 1e-6  # the default is kept


@pytest.mark.parametrize("text, says", [
    ("lr: 0.1\nlr: 0.2\n", "key 'lr' given twice (the second is at line 2)"),
    ("env-kwargs:\n  a: 1\n  a: 2\n", "key 'a' given twice"),
    ("rollout-batch-size: 2\nrollout_batch_size: 3\n", "'rollout_batch_size' and 'rollout-batch-size' both set"),
    ("save: {a: 1}\n", "save: expected a string, got a dict"),
    ("model-path: [a, b]\n", "model-path: expected a string, got a list"),
    ("save: !!binary aGVsbG8=\n", "save: expected a string, got a bytes"),
    ("rollout-stop: [ok, {a: 1}]\n", "rollout-stop: item 1: expected a string, got a dict"),
    ("eval-prompt-data: {a: b}\n", "eval-prompt-data: item 0: expected a string, got a dict"),
    ("rollout-batch-size: [4]\n", "rollout-batch-size: expected an integer, got a list"),
    ("lr: fast\n", "lr: expected a number, got 'fast'"),
    ("seed: true\n", "seed: expected an integer, got true or false"),
])
def test_a_config_file_value_of_the_wrong_shape_is_named(tmp_path, text, says):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    problems = TRAIN.apply_file(TRAIN.root(), config)
    assert len(problems) == 1 and says in problems[0] and str(config) in problems[0], problems


def test_plain_values_still_convert(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_bytes("\ufeffrollout-batch-size: '4'\nnum-rollout: 3.0\nsave: 2024-01-01\nrollout-stop: 5\n"
                       "curriculum-levels: [[4, 4], {size: 8}]\n".encode())  # a byte-order mark is fine
    cfg = TRAIN.root()
    assert TRAIN.apply_file(cfg, config) == []
    assert (cfg.rollout_batch_size, cfg.num_rollout, cfg.checkpoint.save) == (4, 3, "2024-01-01")
    assert cfg.rollout.sampling.stop == ["5"] and cfg.curriculum.levels == [[4, 4], {"size": 8}]


def test_config_files_that_cannot_be_read(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"lr: 0.1\nsave: \xff\xfe\n")
    assert TRAIN.apply_file(TRAIN.root(), bad) == [f"--config {bad}:2: not UTF-8 (invalid start byte at byte 14)"]
    assert TRAIN.apply_file(TRAIN.root(), tmp_path) == [f"--config {tmp_path}: is a folder; expected a YAML file"]
    missing = tmp_path / "none.yaml"
    assert TRAIN.apply_file(TRAIN.root(), missing) == [f"--config {missing}: no such file"]


def _train(tmp_path, capsys, *extra):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "label": "2"}) + "\n")
    code = train_main(["--model-path", "tiny-qwen2", "--env", "agentrl/Math-v0", "--prompt-data", str(data),
                       "--output-dir", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Loading weights" not in err
    return code, err


@pytest.mark.parametrize("extra, says", [
    (["--tensor-model-parallel-size", "0"], "--tensor-model-parallel-size must be >= 1; got 0"),
    (["--pipeline-model-parallel-size", "0"], "--pipeline-model-parallel-size must be >= 1; got 0"),
    (["--context-parallel-size", "0", "--trainer", "megatron"], "--context-parallel-size must be >= 1; got 0"),
    (["--global-batch-size", "0"], "--global-batch-size must be >= 1; got 0"),
    (["--global-batch-size", "-4"], "--global-batch-size must be >= 1; got -4"),
    (["--seed", "-1"], "--seed must be in [0, 2**32); got -1"),
    (["--seed", str(2**40)], "--seed must be in [0, 2**32)"),
    (["--adam-beta1", "1.5"], "--adam-beta1 must be in [0, 1); got 1.5"),
    (["--adam-beta2", "-0.1"], "--adam-beta2 must be in [0, 1); got -0.1"),
    (["--adam-eps", "-1e-8"], "--adam-eps must be >= 0"),
    (["--kl-loss-coef", "-0.1", "--use-kl-loss"], "--kl-loss-coef must be >= 0; got -0.1"),
    (["--prompt-data-limit", "0"], "--prompt-data-limit must be >= 1; got 0"),
    (["--lr", "inf"], "--lr: expected a finite number, got inf"),
    (["--prompt-data", ""], "--prompt-data is required"),
])
def test_train_refuses_settings_that_cannot_work_before_loading_anything(tmp_path, capsys, extra, says):
    code, err = _train(tmp_path, capsys, *extra)
    assert code == 2 and says in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_negative_numbers_in_any_notation_are_values():
    cfg, _, problems = TRAIN.parse(["--overlong-penalty", "-1e-3", "--rollout-top-k", "-1", "--lr", "-inf"],
                                   config_file=False)
    assert cfg.filters.overlong_penalty == -1e-3 and cfg.rollout.sampling.top_k == -1
    assert problems == ["--lr: expected a finite number, got -inf"]
