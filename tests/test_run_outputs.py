"""A run never writes over an earlier one: --output-dir and --save holding a run need --overwrite or --load."""

import json
from pathlib import Path

from agentrl.config import parse_args, validate
from agentrl.loop import train
from agentrl.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "1",
       "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4",
       "--eval-interval", "0", "--engine-max-batch-size", "4"]


def _run(out: Path, *extra: str):
    train(parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt"), *extra]))


def test_a_second_run_into_the_same_folders_is_refused_then_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    _run(out)
    first = (out / "metrics.jsonl").read_text()
    (out / "notes.txt").write_text("mine")  # not the run's: never deleted
    code = main([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--output-dir {out} holds an earlier run (metrics.jsonl): pass --overwrite" in err
    assert f"--save {out / 'ckpt'} holds an earlier run's checkpoints" in err
    assert (out / "metrics.jsonl").read_text() == first  # untouched

    (out / "ckpt" / "rollout_00007").mkdir()  # a checkpoint of the earlier run, not rewritten by this one
    _run(out, "--overwrite")
    assert not (out / "ckpt" / "rollout_00007").exists()
    assert (out / "ckpt" / "latest").read_text() == "rollout_00001"
    assert (out / "notes.txt").read_text() == "mine"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]  # the new run's metrics only


def test_load_resumes_into_the_same_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    _run(out)
    cfg = parse_args([*TOY, "--num-rollout", "2", "--output-dir", str(out), "--save", str(out / "ckpt"),
                      "--load", str(out / "ckpt")])
    assert validate(cfg) == []
    train(cfg)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_a_run_that_failed_before_its_first_rollout_does_not_block_the_retry(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a run that failed while loading leaves
    (out / "metrics.jsonl").write_text("")
    assert validate(parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt")])) == []


def test_held_out_evaluations_use_the_runs_episode_timeout():
    from agentrl.components import build_eval_config

    assert build_eval_config(parse_args([*TOY, "--episode-timeout", "none"])).episode_timeout is None
    assert build_eval_config(parse_args([*TOY, "--episode-timeout", "30"])).episode_timeout == 30.0
