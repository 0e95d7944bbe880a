"""OpenEnv environments through the adapter: a game written against openenv-core's own base classes, played
in-process and through a real OpenEnv server (openenv's create_app, its GenericEnvClient); check-env with the
exploit check and the environment's oracle; a 2-rollout training run."""

from pathlib import Path

import gymnasium
import pytest

pytest.importorskip("openenv.core", reason="pip install 'agentrl[openenv]'")

from agentrl.env import check_env, make, register  # noqa: E402
from agentrl.env.adapters.openenv import OpenEnvEnv  # noqa: E402
from agentrl.env.exploits import check_exploits  # noqa: E402
from agentrl.env.cli import main as check_env_main  # noqa: E402

GAME = f"{Path(__file__).with_name('openenv_guess.py')}:GuessEnvironment"


@pytest.fixture
def registered():
    register("OpenEnvGuess-v0", "agentrl.env.adapters.openenv:OpenEnvEnv", max_turns=6, env=GAME)
    yield "agentrl/OpenEnvGuess-v0"
    del gymnasium.registry["agentrl/OpenEnvGuess-v0"]


def test_observations_actions_rewards():
    env = OpenEnvEnv(GAME, instructions="A game.")
    messages, info = env.reset(seed=3)
    text = messages[0]["content"]
    assert text.startswith('A game.\n\n{"feedback": "I picked a number from 1 to 20. Guess it.", "guesses_left": 5}')
    assert "just the value of its one required field 'guess'" in text and '"metadata"' not in text
    secret = env.inner.secret
    wrong = 1 if secret != 1 else 2
    out = env.step(str(wrong))
    assert out[0][0]["content"].startswith(f'{{"feedback": "{wrong} is wrong: go') and out[1:4] == (0.0, False, False)
    assert out[4]["hint"] in ("higher", "lower")
    out = env.step("not a number")
    assert out[0][0]["content"].startswith("Invalid action:") and out[1:3] == (0.0, False) and out[4]["invalid_action"]
    assert env.step("```json\n{\"guess\": " + str(secret) + "}\n```")[1:3] == (1.0, True)
    env.reset(seed=3, options={"low": 20})  # the row's keys that the OpenEnv reset names
    assert env.inner.secret == 20
    env.close()


def test_an_environment_without_an_action_type_is_refused():
    from openenv.core.env_server.interfaces import Environment

    class Bare(Environment):
        def reset(self, seed=None, episode_id=None, **kw): ...
        def step(self, action, timeout_s=None, **kw): ...
        state = None

    with pytest.raises(TypeError, match="no Action annotation"):
        OpenEnvEnv(Bare)
    with pytest.raises(ValueError, match="env=.*base_url="):
        OpenEnvEnv()


def test_check_env_exploits_and_oracle(registered, capsys):
    """``agentrl check-env --exploits`` on it, as a user runs it: no cheat scores, the game's oracle does."""
    assert check_env_main([registered, "--exploits"]) == 0
    assert f"ok    {registered}" in capsys.readouterr().out
    report = check_exploits(lambda: make(registered))
    assert report.ok and report.oracle_checked and report.returns["oracle"] == 1.0


@pytest.mark.slow
def test_two_rollouts(registered, two_rollouts):
    """~60-100 s on 2 cores: two training steps of tiny-qwen2 over the game."""
    two_rollouts(registered, [{"low": 1}, {"low": 10}])


def test_over_a_real_openenv_server(openenv_server):
    server = openenv_server
    env = OpenEnvEnv(base_url=server)
    messages, _ = env.reset(seed=3)
    assert '"feedback": "I picked a number from 1 to 20. Guess it."' in messages[0]["content"]
    assert "'guess'" in messages[0]["content"]
    local = OpenEnvEnv(GAME)
    local.reset(seed=3)
    secret = local.inner.secret
    out = env.step("not a number")
    assert out[0][0]["content"].startswith("Invalid action:") and out[1:3] == (0.0, False)
    assert env.step(str(secret))[1:3] == (1.0, True)
    env.close()
    register("OpenEnvGuessServer-v0", "agentrl.env.adapters.openenv:OpenEnvEnv", max_turns=6, base_url=server)
    try:
        assert check_env(lambda: make("agentrl/OpenEnvGuessServer-v0"), fuzz_samples=2).ok
    finally:
        del gymnasium.registry["agentrl/OpenEnvGuessServer-v0"]
