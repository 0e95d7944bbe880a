"""A 2-rollout training run at toy scale (tiny model) on a given environment, for each adapter."""

import json
import socket
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def two_rollouts(tmp_path, monkeypatch):
    """``two_rollouts(env_id, prompt_rows, *flags) -> metrics of the 2 steps``: train.py's main, tiny-qwen2."""
    from agentrl.train_cli import main

    def run(env_id: str, rows: list[dict], *flags: str) -> list[dict]:
        monkeypatch.chdir(ROOT)
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "run"
        code = main(["--model-path", "tiny-qwen2", "--env", env_id, "--prompt-data", str(data), "--num-rollout", "2",
                     "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--global-batch-size", "4",
                     "--rollout-max-response-len", "8", "--rollout-max-context-len", "1024", "--eval-interval", "0",
                     "--no-gradient-checkpointing",
                     "--entropy-coef", "0.01",  # a step with equal rewards still trains (no-signal steps are skipped)
                     "--output-dir", str(out), "--save", str(out / "ckpt"), *flags],
                    prog="train.py")
        assert code in (0, None)
        steps = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "perf/step_time" in r]
        assert len(steps) == 2
        assert all(r["rollout/status_failed"] == 0 and "train/loss" in r for r in steps), steps
        return steps

    return run


@pytest.fixture
def openenv_server():
    """A real OpenEnv server (openenv's create_app under uvicorn) of openenv_guess.py, on a free loopback port."""
    import uvicorn
    from openenv.core.env_server.http_server import create_app

    from agentrl.utils.imports import load_object

    game = load_object(f"{Path(__file__).with_name('openenv_guess.py')}:GuessEnvironment")
    module = __import__(game.__module__)
    app = create_app(game, module.GuessAction, module.GuessObservation, env_name="guess", max_concurrent_envs=64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "the OpenEnv server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
