"""One vocabulary across train.py, agentrl eval, agentrl serve and agentrl retriever: every setting reachable from
the command line and from YAML, one spelling and one help text per flag."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentrl.config import TABLE as TRAIN
from agentrl.config import from_mapping, parse_args, to_dict
from agentrl.engine._server_run import TABLE as SERVE
from agentrl.eval.cli import TABLE as EVAL
from tools.retriever.server import TABLE as RETRIEVER

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"train.py": TRAIN, "agentrl eval": EVAL, "agentrl serve": SERVE, "agentrl retriever": RETRIEVER}
SAME_NAME_OTHER_MEANING = {
    "--config": "train, serve and retriever read a YAML file of their own flags; eval reads a training run's (its "
                "held-out sets and settings)",
    "--engine": "train picks embedded or sglang; serve picks embedded or fake (a test double)",
    "--device": "the trainer's device in train; the retriever's encoder in retriever",
}


def helps(table) -> dict[str, str]:
    parser = table.parser("x", "")
    return {a.option_strings[0]: a.help for a in parser._actions
            if a.option_strings and a.dest not in ("help",) and a.help != argparse.SUPPRESS}


def meaning(text: str) -> str:
    """A help text's first sentence: what the flag is (a command may add what it does with it)."""
    text = re.sub(r"\s*\([^()]*\)", "", text)  # parentheticals: defaults, examples, old spellings
    return re.split(r"(?<=[.;])\s", text)[0].rstrip(".;")


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_setting_has_a_flag_with_help(command):
    table = TABLES[command]
    assert table.unreachable() == [], f"{command}: settings no flag reaches"
    for flag, text in helps(table).items():
        assert text and len(text) > 15, (command, flag)


def test_a_flag_means_one_thing_in_every_command():
    seen: dict[str, tuple[str, str]] = {}
    for command, table in TABLES.items():
        for flag, text in helps(table).items():
            if flag in seen and flag not in SAME_NAME_OTHER_MEANING:
                assert meaning(text) == meaning(seen[flag][1]), f"{flag}: {seen[flag][0]} and {command} differ"
            seen.setdefault(flag, (command, text))


def test_every_train_setting_round_trips_through_yaml(tmp_path):
    cfg = parse_args(["--env", "Echo-v0", "--lr", "3e-5", "--engine-max-batch-size", "7", "--overlong", "mask",
                      "--eval-prompt-data", "a", "x.jsonl", "--rollout-stop", "END", "--env-kwargs", '{"k": 1}',
                      "--skip-bad-rows", "--max-staleness", "1", "--tensor-model-parallel-size", "2"])
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(to_dict(cfg)))
    again = parse_args(["--config", str(file)])
    assert to_dict(again) == to_dict(cfg)
    assert again.engine.embedded.max_batch_size == 7 and again.data.on_bad_row == "skip"
    assert again.rollout.sampling.stop == ["END"] and again.megatron.tensor_parallel == 2
    assert to_dict(from_mapping(to_dict(cfg), "state.json")) == to_dict(cfg)


def test_every_recipe_loads():
    for recipe in sorted((ROOT / "recipes").glob("*/*.yaml")):
        parse_args(["--config", str(recipe)])


def test_old_spellings_work_with_a_notice(capsys):
    from agentrl.eval.cli import parse_args as eval_args

    args = eval_args(["--model-path", "m", "--out", "runs/x", "--n-samples", "4", "--limit", "3",
                      "--engine-url", "http://h:1", "--max-response-len", "9"])
    assert (args.out, args.n_samples, args.limit, args.engine_url, args.max_response_len) == \
        ("runs/x", 4, 3, ["http://h:1"], 9)
    err = capsys.readouterr().err
    assert "--out is deprecated and will be removed; use --output-dir" in err
    assert "--engine-url is deprecated and will be removed; use --sglang-url" in err


def test_help_needs_no_torch():
    code = ("import sys, contextlib, io\nfrom agentrl.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['--help'], ['train', '--help'], ['eval', '--help'], ['serve', '--help'],"
            " ['retriever', '--help']):\n"
            "        try:\n            main(argv)\n        except SystemExit:\n            pass\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_none_switches_off_an_optional_setting_a_config_gave():
    """A recipe's optional setting (a warm start, an eval set) is switched off from the command line with 'none'."""
    assert parse_args(["--config", "recipes/frozenlake/config.yaml"]).sft.data == "oracle"
    for spelling in ("none", "None", "null"):
        assert parse_args(["--config", "recipes/frozenlake/config.yaml", "--sft-data", spelling]).sft.data is None
    assert parse_args(["--config", "recipes/frozenlake/config.yaml", "--episode-timeout", "none"]).rollout.episode_timeout is None
    assert parse_args(["--prompt-data", "p.jsonl", "--label-key", "none"]).data.label_key is None  # like --label-key ''
    assert parse_args(["--prompt-data", "p.jsonl", "--input-key", "none"]).data.input_key == "none"  # not optional: a name


def test_python_dash_m_agentrl_is_the_agentrl_command():
    """``python -m agentrl`` works where the ``agentrl`` script is not on the PATH."""
    out = subprocess.run([sys.executable, "-m", "agentrl", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "commands:" in out.stdout and "check-env" in out.stdout, out.stderr
    bad = subprocess.run([sys.executable, "-m", "agentrl", "trian"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "Did you mean 'train'?" in bad.stderr
