"""verifiers environments through the adapter: tasksets, tool servers and rubrics written against verifiers.v1's
own base classes, an Env that plays the user turn by turn, and verifiers' own OpenEnv taskset and Env (shipped in
the package) against a real OpenEnv server; check-env with the exploit check; a 2-rollout training run."""

from pathlib import Path

import gymnasium
import pytest

from agentrl.env import make, register  # noqa: E402
from agentrl.env.adapters.verifiers import VerifiersEnv, load_verifiers  # noqa: E402
from agentrl.utils.extras import MissingExtra  # noqa: E402

try:
    load_verifiers("this test module")
except MissingExtra as e:
    pytest.skip(str(e), allow_module_level=True)
from agentrl.env.cli import main as check_env_main  # noqa: E402

TASKS = Path(__file__).with_name("vf_tasks.py")
SUMS, GUESS, GUESS_ENV = f"{TASKS}:SumTaskset", f"{TASKS}:GuessTaskset", f"{TASKS}:GuessEnv"


@pytest.fixture
def registered():
    register("VfSum-v0", "agentrl.env.adapters.verifiers:VerifiersEnv", max_turns=4, taskset=SUMS)
    register("VfGuess-v0", "agentrl.env.adapters.verifiers:VerifiersEnv", max_turns=6, taskset=GUESS, env=GUESS_ENV)
    yield "agentrl/VfSum-v0", "agentrl/VfGuess-v0"
    del gymnasium.registry["agentrl/VfSum-v0"], gymnasium.registry["agentrl/VfGuess-v0"]


def test_single_agent_with_tools_and_rubric():
    env = VerifiersEnv(SUMS)
    assert [s["function"]["name"] for s in env.tool_schemas()] == ["calculator_toolset_add"]
    assert env.tool_schemas()[0]["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    messages, info = env.reset(seed=1)
    assert [m["role"] for m in messages] == ["system", "user"] and messages[0]["content"] == "You are exact."
    task = env.tasks[1]
    assert messages[1]["content"] == task.data.prompt and info["task_index"] == 1
    a, b = (int(x) for x in task.data.prompt.split("What is ")[1].split("?")[0].split(" + "))
    out = env.step(f'<tool_call>{{"name": "calculator_toolset_add", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>')
    assert out[0] == [{"role": "tool", "name": "calculator_toolset_add", "content": str(a + b)}]
    assert out[1:3] == (0.0, False)
    out = env.step(str(a + b))
    assert out[1:3] == (1.0, True)
    assert out[4]["rewards"] == {"exact": 1.0} and out[4]["metrics"] == {"tool_calls": 1.0}
    env.reset(seed=1)
    assert env.step(f"It is {a + b}.")[1:3] == (0.0, True)
    env.close()


def test_an_env_that_plays_the_user():
    env = VerifiersEnv(GUESS, env=GUESS_ENV)
    messages, _ = env.reset(options={"task_index": 2})
    assert messages == [{"role": "user", "content": "I picked a number from 1 to 20. Reply with one number."}]
    secret = env.tasks[2].data.secret
    wrong = 1 if secret != 1 else 2
    out = env.step(str(wrong))
    assert out[0][0]["content"].startswith("higher; 4 guesses left" if wrong < secret else "lower;") and not out[2]
    assert env.step("twelve")[0][0]["content"] == "not a number; 3 guesses left"
    assert env.step(str(secret))[1:3] == (1.0, True)
    env.reset(options={"task_index": 2})  # a reset in the middle of an episode starts a fresh one
    for _ in range(4):
        assert env.step(str(wrong))[2] is False
    assert env.step(str(wrong))[1:3] == (0.0, True)
    env.close()


def test_mistakes_are_named():
    with pytest.raises(TypeError, match="verifiers Taskset"):
        VerifiersEnv(f"{TASKS}:GuessEnv")
    with pytest.raises(ValueError, match="seat 'judge'.*'player'"):
        VerifiersEnv(GUESS, env=GUESS_ENV, seat="judge")


def test_check_env_and_exploits(registered, capsys):
    """``agentrl check-env --exploits`` on both, as a user runs it."""
    assert check_env_main([*registered, "--exploits", "--fuzz-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert all(f"ok    {env_id}" in out for env_id in registered), out


@pytest.mark.slow
def test_two_rollouts(registered, two_rollouts):
    """~60-80 s on 2 cores: two training steps of tiny-qwen2 over the verifiers game."""
    two_rollouts(registered[1], [{"task_index": 0}, {"task_index": 1}])


def test_verifiers_own_openenv_taskset(openenv_server):
    """verifiers.v1.tasksets.openenv (its OpenEnvTaskset and OpenEnvEnv) by its taskset id, over a real server."""
    from openenv.core import GenericEnvClient

    if not hasattr(GenericEnvClient(base_url=openenv_server), "_base_url"):
        pytest.skip("this verifiers' OpenEnvEnv reads GenericEnvClient._base_url, which this openenv-core lacks")
    env = VerifiersEnv("openenv", taskset_config={"base_url": openenv_server, "resets": [{"seed": 3}]})
    messages, _ = env.reset(seed=0)
    assert '"feedback": "I picked a number from 1 to 20. Guess it."' in messages[-1]["content"]
    assert '"action_schema"' in messages[-1]["content"]
    from agentrl.utils.imports import load_object

    game = load_object(f"{TASKS.with_name('openenv_guess.py')}:GuessEnvironment")()
    game.reset(seed=3)
    assert env.step('{"guess": %d}' % game.secret)[1:3] == (1.0, True)
    env.close()


def test_agentrl_environments_as_a_verifiers_taskset(tmp_path, monkeypatch):
    """The other direction: agentrl/GSM8K-v0 as a verifiers Taskset and Env, found by verifiers' own loaders under
    a taskset id (a one-line module, as docs/environments.md shows), played back through the adapter."""
    (tmp_path / "agentrl_tasks.py").write_text(
        "from agentrl.env.adapters.verifiers_taskset import AgentrlEnv, AgentrlTaskset, __all__  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from verifiers.v1.utils.loaders import environment_class

    from agentrl.env.adapters.verifiers_taskset import AgentrlEnv

    assert environment_class("agentrl-tasks") is AgentrlEnv
    env = VerifiersEnv("agentrl-tasks", taskset_config={"env": "agentrl/GSM8K-v0", "num_seeds": 3})
    assert [t.data.seed for t in env.tasks] == [0, 1, 2]
    direct = make("agentrl/GSM8K-v0")
    expected, _ = direct.reset(seed=1)
    messages, _ = env.reset(seed=1)
    assert messages == [{"role": m["role"], "content": m["content"]} for m in expected]
    assert env.step(direct.unwrapped.oracle(1)[0])[1:3] == (1.0, True)
    env.close()
    register("VfRoundTrip-v0", "agentrl.env.adapters.verifiers:VerifiersEnv", max_turns=2,
             taskset="agentrl.env.adapters.verifiers_taskset:AgentrlTaskset",
             env="agentrl.env.adapters.verifiers_taskset:AgentrlEnv",
             taskset_config={"env": "agentrl/GSM8K-v0", "num_seeds": 3})
    try:
        assert check_env_main(["VfRoundTrip-v0", "--exploits", "--fuzz-samples", "2"]) == 0
    finally:
        del gymnasium.registry["agentrl/VfRoundTrip-v0"]
