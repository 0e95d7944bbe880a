"""A run whose engine is gone stops with one clear line instead of training on nothing."""

import json
import socket
from pathlib import Path

from agentrl.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--rollout-batch-size", "2",
       "--n-samples-per-prompt", "2", "--rollout-max-response-len", "8", "--eval-interval", "0",
       "--engine-max-batch-size", "8"]


def test_a_rollout_the_engine_failed_whole_stops_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    code = main([*TOY, "--num-rollout", "3", "--output-dir", str(out), "--save", str(out / "ckpt"),
                 "--save-interval", "1", "--custom-generate-function-path", "tests/_engine_down.py:down_from_rollout_1"])
    err = capsys.readouterr().err
    assert code == 1 and "engine error: rollout 1: the engine failed every episode" in err
    assert "failed after 9 attempts" in err and "Traceback" not in err
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1]  # rollout 0 trained and saved; nothing logged for rollout 1
    assert (out / "ckpt" / "rollout_00001").is_dir() and not (out / "ckpt" / "rollout_00002").exists()


def test_sglang_urls_that_do_not_answer_stop_the_run_before_it_loads_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main([*TOY, "--engine", "sglang", "--sglang-url", f"http://127.0.0.1:{port}", "--output-dir",
                 str(tmp_path / "run"), "--save", str(tmp_path / "run" / "ckpt")])
    err = capsys.readouterr().err
    assert code == 1 and f"no server answers /health_generate at http://127.0.0.1:{port}" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
