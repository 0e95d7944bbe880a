"""The learning-signal guard: per-rollout metrics of equal-reward and all-zero groups, one warning after
rollouts without signal, and no backward pass for a batch whose advantages are all 0."""

import json
import logging
from pathlib import Path

import pytest

from agentrl.config import parse_args
from agentrl.loop import train
from agentrl.rollout.signal import RolloutsFailed, SignalConfig, SignalGuard, group_signal
from agentrl.types import Group, Sample

ROOT = Path(__file__).resolve().parents[2]


def _groups(*rewards):
    return [Group(i, [Sample(group_id=i, reward=r) for r in rs]) for i, rs in enumerate(rewards)]


def test_group_signal_counts_equal_and_all_zero_groups():
    m = group_signal(_groups([0, 0], [1, 1], [0, 1], [0, 0]))
    assert m == {"signal/equal_reward_groups": 0.75, "signal/all_zero_groups": 0.5}
    failed = Group(9, [Sample(group_id=9, reward=0.0, status="failed", error="x")])
    assert group_signal([failed]) == {}  # failed episodes are left out


def test_the_guard_warns_once_after_flat_rollouts_and_resets_on_signal(caplog):
    guard = SignalGuard(SignalConfig(rollouts=5))
    with caplog.at_level(logging.WARNING, logger="agentrl.rollout.signal"):
        seen = [guard.observe(_groups([0, 0], [0, 0])) for _ in range(7)]
    assert [m["signal/flat_rollouts"] for m in seen] == [1, 2, 3, 4, 5, 6, 7]
    assert [m.get("signal/warned", 0.0) for m in seen] == [0, 0, 0, 0, 1, 0, 0]
    (record,) = [r for r in caplog.records if "no learning signal" in r.message]
    assert "--sft-data" in record.message and "check-env --signal" in record.message
    assert guard.observe(_groups([0, 1], [0, 0]))["signal/flat_rollouts"] == 0  # half the groups have signal
    restored = SignalGuard(SignalConfig(rollouts=5))
    restored.load_state_dict(guard.state_dict())
    assert restored.warned and restored.flat == 0


def test_the_guard_counts_rollouts_whose_every_episode_failed_and_stops_at_the_limit():
    guard = SignalGuard(SignalConfig(failed_rollouts=2))
    failed = [Group(0, [Sample(group_id=0, status="failed", error="ValueError: bad tool") for _ in range(2)])]
    half = [Group(0, [Sample(group_id=0, status="failed", error="x"), Sample(group_id=0, reward=1.0)])]
    assert guard.observe(failed)["signal/failed_rollouts"] == 1
    guard.stop_if_failing()
    assert guard.observe(half)["signal/failed_rollouts"] == 0  # one episode ran: not a bug of every episode
    assert guard.observe([])["signal/failed_rollouts"] == 0
    guard.observe(failed)
    restored = SignalGuard(SignalConfig(failed_rollouts=2))
    restored.load_state_dict(guard.state_dict())
    assert restored.observe(failed)["signal/failed_rollouts"] == 2
    with pytest.raises(RolloutsFailed, match="last 2 rollouts failed .*ValueError: bad tool.*--stop-after-failed"):
        restored.stop_if_failing()
    never = SignalGuard(SignalConfig(failed_rollouts=0))
    for _ in range(5):
        never.observe(failed)
    never.stop_if_failing()
    assert SignalConfig(failed_rollouts=-1).problems() == ["--stop-after-failed-rollouts must be >= 0; got -1"]


def test_a_reward_function_that_fails_every_episode_stops_the_run(tmp_path, monkeypatch, capsys):
    """One line and exit 1 after --stop-after-failed-rollouts rollouts, their metrics logged; not 5 rollouts of nothing."""
    from agentrl.train_cli import main

    monkeypatch.chdir(ROOT)
    code = main([*ARGS, "--custom-rm-path", "tests/_failing_reward.py:reward", "--output-dir", str(tmp_path),
                 "--save", "none", "--stop-after-failed-rollouts", "2"])
    err = capsys.readouterr().err
    assert code == 1, err
    (line,) = [ln for ln in err.splitlines() if "stopping" in ln]
    assert line.startswith("agentrl train: every episode of the last 2 rollouts failed") and "KeyError" in line
    assert "Traceback" not in err
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["signal/failed_rollouts"] for r in rows if "signal/failed_rollouts" in r] == [1.0, 2.0]


ARGS = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--rollout-batch-size", "2",
        "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4", "--eval-interval", "0",
        "--engine-max-batch-size", "4", "--rollout-concurrency", "1", "--num-rollout", "5"]


def test_a_run_without_signal_warns_once_and_skips_its_backward_passes(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)
    with caplog.at_level(logging.WARNING):
        train(parse_args([*ARGS, "--custom-rm-path", "tests/_flat_reward.py:reward", "--output-dir", str(tmp_path),
                          "--save", "none"]))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "rollout/reward_mean" in r]
    assert len(rows) == 5
    assert all(r["signal/equal_reward_groups"] == 1.0 and r["signal/all_zero_groups"] == 1.0 for r in rows)
    assert [r.get("signal/warned", 0.0) for r in rows] == [0, 0, 0, 0, 1]
    assert all(r["train/skipped_no_signal"] == 1.0 and "train/grad_norm" not in r for r in rows)
    assert len([r for r in caplog.records if "no learning signal" in r.message]) == 1


def test_a_batch_with_signal_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    train(parse_args([*ARGS, "--num-rollout", "1", "--custom-rm-path", "tests/_resume_reward.py:reward",
                      "--output-dir", str(tmp_path), "--save", "none"]))
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "rollout/reward_mean" in line]
    if row["signal/equal_reward_groups"] == 1.0:
        pytest.skip("the tiny model's episodes earned equal rewards in this rollout")
    assert row["train/skipped_no_signal"] == 0.0 and "train/grad_norm" in row


def _check(template, reward_path, tmp_path):
    import asyncio

    from agentrl.rollout.signal import check_signal
    from agentrl.testing import FakeEngine

    # odd sampling seeds answer with even tokens: tests/_resume_reward.py pays 1 for them, 0 for the others
    engine = FakeEngine(responder=lambda ids, sampling: [2, 2] if sampling.seed % 2 else [3, 3])
    cfg = parse_args(["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2",
                      "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--custom-rm-path", reward_path])
    return asyncio.run(check_signal(cfg, 2, engine=engine, template=template))


def test_check_signal_reports_whether_any_group_had_unequal_rewards(template, tmp_path, monkeypatch):
    from agentrl.rollout.signal import signal_verdict

    monkeypatch.chdir(ROOT)
    rows = _check(template, "tests/_resume_reward.py:reward", tmp_path)
    assert len(rows) == 2 and all(r["signal/equal_reward_groups"] == 0.0 for r in rows)
    assert signal_verdict(rows) == (True, "signal: 4 of 4 groups had unequal rewards; GRPO has something to learn from")
    flat = _check(template, "tests/_flat_reward.py:reward", tmp_path)
    ok, line = signal_verdict(flat)
    assert not ok and line.startswith("no signal: all 4 groups had equal rewards") and "--sft-data" in line


def test_check_env_signal_runs_the_real_model(monkeypatch, capsys):
    from agentrl.env.cli import main

    monkeypatch.chdir(ROOT)
    rc = main(["FrozenLake-v0", "--signal", "--signal-rollouts", "1", "--model-path", "tiny-qwen2",
               "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4",
               "--max-turns", "2", "--engine-max-batch-size", "4"])
    out = capsys.readouterr().out
    assert "rollout 0: reward" in out and ("no signal:" in out) == (rc == 1) and rc in (0, 1)
    assert main(["FrozenLake-v0", "--model-path", "tiny-qwen2"]) == 2  # training flags only with --signal
