import asyncio
import re
import subprocess
import sys
import threading
import time

import gymnasium
import pytest

from agentrl.env import (EnvCheckError, EnvNotFoundError, TextEnv, TokenBudget, TurnLimit, check_env, make,
                         register, registered_ids)
from agentrl.testing.echo_env import EchoEnv


class AsyncOnly(TextEnv):
    """Implements only the async pair: the sync pair must still work."""

    async def areset(self, *, seed=None, options=None):
        self.seed_rng(seed)
        await asyncio.sleep(0)
        self.n = int(self.np_random.integers(0, 100))
        return [{"role": "user", "content": f"n={self.n}"}], {"n": self.n}

    async def astep(self, action):
        await asyncio.sleep(0)
        ok = action.strip() == str(self.n)
        return [{"role": "user", "content": "ok" if ok else "no"}], float(ok), ok, False, {}


def test_sync_env_gets_async_api():
    env = EchoEnv()

    async def run():
        obs, info = await env.areset(seed=1, options={"target": "cloud"})
        assert info["target"] == "cloud" and "cloud" in obs[0]["content"]
        return await env.astep("a cloud!")

    obs, reward, terminated, truncated, info = asyncio.run(run())
    assert (reward, terminated, truncated) == (1.0, True, False)


def test_async_env_gets_sync_api_and_seeding():
    env = AsyncOnly()
    obs1, info1 = env.reset(seed=7)
    obs2, info2 = env.reset(seed=7)
    assert obs1 == obs2 and info1 == info2
    assert env.step(str(info1["n"]))[1:3] == (1.0, True)
    env.close()
    env.close()


def test_sync_api_inside_running_loop_says_what_to_do():
    env = AsyncOnly()

    async def run():
        env.reset(seed=0)

    with pytest.raises(RuntimeError, match="await env.areset"):
        asyncio.run(run())


def test_env_without_any_reset_fails_loudly():
    class Empty(TextEnv):
        pass

    with pytest.raises(NotImplementedError, match="must implement reset"):
        Empty().reset()
    with pytest.raises(NotImplementedError, match="must implement"):
        asyncio.run(Empty().astep("x"))


def test_registry_make_and_suggestions():
    assert "agentrl/Echo-v0" in registered_ids()
    env = make("Echo-v0")
    assert isinstance(env, TurnLimit) and env.max_turns == 3  # registered max_turns
    assert isinstance(gymnasium.make("agentrl/Echo-v0").unwrapped, EchoEnv)
    with pytest.raises(EnvNotFoundError, match="did you mean 'agentrl/Echo-v0'"):
        make("agentrl/Ecko-v0")
    with pytest.raises(ValueError, match="module:ClassName"):
        register("Bad-v0", "no_colon_here")


def _register_for_test(monkeypatch, env_id, entry_point):
    """``register``, undone when the test ends (the registry is gymnasium's, shared by the session)."""
    register(env_id, entry_point)
    spec = gymnasium.registry.pop(f"agentrl/{env_id}")
    monkeypatch.setitem(gymnasium.registry, f"agentrl/{env_id}", spec)


@pytest.mark.parametrize("kwargs, message", [
    ({"wordz": ("a",)}, "agentrl/Echo-v0 got unexpected keyword argument 'wordz' (did you mean 'words'?); "
                        "it accepts: words"),
    ({"max_turns": "3"}, "max_turns must be an int >= 1; got str '3'"),
])
def test_make_names_a_mistyped_keyword_argument(kwargs, message):
    with pytest.raises(TypeError) as caught:
        make("Echo-v0", **kwargs)
    assert str(caught.value) == message


def test_make_checks_scalar_keyword_argument_types(monkeypatch):
    class Typed(TextEnv):
        def __init__(self, n: int = 1, scale: float = 1.0, name: str | None = None, flag: bool = False,
                     words: tuple[str, ...] = ()):
            super().__init__()
            self.n, self.scale = n, scale

    _register_for_test(monkeypatch, "TypedKw-v0", f"{__name__}:_TypedKw")
    monkeypatch.setitem(globals(), "_TypedKw", Typed)
    assert make("TypedKw-v0", n=2, scale=3, name=None, flag=True, words=["a"]).unwrapped.scale == 3  # int for float
    for bad, message in [({"n": "2"}, "'n' must be int; got str '2'"), ({"n": True}, "'n' must be int; got bool"),
                         ({"scale": "x"}, "'scale' must be float; got str"),
                         ({"name": 5}, "'name' must be NoneType or str; got int 5"),
                         ({"flag": 1}, "'flag' must be bool; got int 1")]:
        with pytest.raises(TypeError, match=re.escape(message)):
            make("TypedKw-v0", **bad)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'nn' \(did you mean 'n'\?\); it accepts: n, "):
        make("TypedKw-v0", nn=1)


def test_turn_limit_truncates_and_token_budget_truncates():
    env = TurnLimit(EchoEnv(), max_turns=2)
    env.reset(seed=0, options={"target": "piano"})
    assert env.step("no")[2:4] == (False, False)
    _, _, terminated, truncated, info = env.step("no")
    assert (terminated, truncated, info["truncated_by"]) == (False, True, "max_turns")
    env.reset(seed=0, options={"target": "piano"})
    assert env.step("no")[3] is False  # the count starts again after reset
    # terminating on the last allowed turn is termination, not truncation
    env = TurnLimit(EchoEnv(), max_turns=1)
    env.reset(options={"target": "piano"})
    assert env.step("piano")[2:4] == (True, False)

    budget = TokenBudget(EchoEnv(), max_tokens=30, count_tokens=lambda s: len(s.split()))
    budget.reset(options={"target": "piano"})
    assert budget.step("one two")[3] is False
    assert budget.step("w " * 20)[3] is True


def test_echo_env_passes_check_env():
    report = check_env(lambda: make("Echo-v0"))
    assert report.ok, report.problems


class RaisesOnEmpty(EchoEnv):
    def step(self, action):
        if not action:
            raise ValueError("empty!")
        return super().step(action)


class Nondeterministic(EchoEnv):
    counter = 0

    def reset(self, *, seed=None, options=None):
        Nondeterministic.counter += 1
        obs, info = super().reset(seed=seed, options=options)
        return [{"role": "user", "content": f"call {Nondeterministic.counter}"}], info


class NotJsonInfo(EchoEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return obs, r, term, trunc, {"object": object()}


class NanReward(EchoEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return obs, float("nan"), term, trunc, info


class BadMessages(EchoEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return [{"role": "robot", "content": 3}], r, term, trunc, info


class CloseTwiceFails(EchoEnv):
    closed = False

    def close(self):
        if self.closed:
            raise RuntimeError("already closed")
        self.closed = True


@pytest.mark.parametrize(
    "cls, needle",
    [
        (RaisesOnEmpty, "empty action"),
        (Nondeterministic, "reset(seed=0) twice gave different results"),
        (NotJsonInfo, "not JSON-serialisable"),
        (NanReward, "reward must be a finite number"),
        (BadMessages, "message role must be one of"),
        (CloseTwiceFails, "close() twice"),
    ],
)
def test_check_env_catches_broken_envs(cls, needle):
    report = check_env(cls, gymnasium_checks=False)
    assert not report.ok
    assert any(needle in p for p in report.problems), report.problems
    with pytest.raises(EnvCheckError, match=cls.__name__):
        report.raise_if_failed()


class HangsOnEmpty(EchoEnv):
    def step(self, action):
        if not action:
            threading.Event().wait()  # never returns
        return super().step(action)


def test_check_env_reports_a_step_that_hangs_in_bounded_time():
    start = time.monotonic()
    report = check_env(HangsOnEmpty, gymnasium_checks=False, timeout=1.0)
    assert time.monotonic() - start < 10
    assert report.problems == ["fuzzing: did not finish within 1 s (a reset() or step() that hangs?); the remaining "
                               "checks were skipped"]


def test_check_env_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "agentrl.cli", "check-env", "--all"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok    agentrl/Echo-v0" in ok.stdout
    # a broken env registered from a plugin module fails the command with a named problem
    mod = tmp_path / "broken_envs.py"
    mod.write_text(
        "from agentrl.testing.echo_env import EchoEnv\n"
        "from agentrl.env import register\n"
        "class Broken(EchoEnv):\n"
        "    def step(self, action):\n"
        "        if len(action) > 1000: raise MemoryError('too long')\n"
        "        return super().step(action)\n"
    )
    code = ("import sys; sys.path.insert(0, %r); import broken_envs;"
            "from agentrl.env import register; register('Broken-v0', 'broken_envs:Broken');"
            "from agentrl.cli import main; sys.exit(main(['check-env', 'Broken-v0', 'Echo-v0']))" % str(tmp_path))
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  agentrl/Broken-v0" in bad.stdout and "100k-character action" in bad.stdout
    assert "1 passed, 1 failed" in bad.stdout
    unknown = subprocess.run([sys.executable, "-m", "agentrl.cli", "check-env", "Nope-v0"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "not registered" in unknown.stderr


def test_check_env_cli_refuses_a_timeout_that_is_not_positive(capsys):
    from agentrl.env.cli import main

    assert main(["Echo-v0", "--check-timeout", "0"]) == 2
    assert "--check-timeout must be > 0; got 0" in capsys.readouterr().err


def test_check_env_cli_refuses_numbers_out_of_range_as_flag_errors(capsys):
    """A negative seed is the command line's mistake, not a contract failure of the environment."""
    from agentrl.env.cli import main

    assert main(["Echo-v0", "--seed", "-1", "--fuzz-samples", "-2", "--exploit-seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "--seed must be >= 0; got -1" in err and "--fuzz-samples must be >= 0; got -2" in err
    assert "--exploit-seeds must be >= 1; got 0" in err and "FAIL" not in err


def test_signal_mode_keeps_training_flags_and_their_values_out_of_the_ids():
    """``check-env --signal --config FILE`` names no id: FILE is --config's value, not an environment."""
    from agentrl.env.cli import _split_training_flags, build_parser

    parser = build_parser()
    ours, training = _split_training_flags(
        ["--signal", "--config", "recipes/frozenlake/config.yaml", "--eval-prompt-data", "a", "a.jsonl",
         "--lr=1e-3", "--overlong-penalty", "-1e-3", "--seed", "3", "--signal-rollouts=1"], parser)
    assert ours == ["--signal", "--seed", "3", "--signal-rollouts=1"]
    assert training == ["--config", "recipes/frozenlake/config.yaml", "--eval-prompt-data", "a", "a.jsonl",
                        "--lr=1e-3", "--overlong-penalty", "-1e-3"]
    args = parser.parse_args(ours)
    assert args.env_ids == [] and args.seed == 3 and args.signal_rollouts == 1
    ours, training = _split_training_flags(["FrozenLake-v0", "--signal", "--model-path", "tiny-qwen2"], parser)
    assert parser.parse_args(ours).env_ids == ["FrozenLake-v0"] and training == ["--model-path", "tiny-qwen2"]


def test_check_env_cli_reports_sys_exit_in_an_env_module_and_checks_the_rest(tmp_path, monkeypatch, capsys):
    from agentrl.env.cli import main

    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit('usage: exits_at_import [-h]')\n")
    (tmp_path / "exits_in_step.py").write_text(
        "import sys\nfrom agentrl.testing.echo_env import EchoEnv\n\n\nclass Env(EchoEnv):\n"
        "    def step(self, action):\n        if not action:\n            sys.exit(4)\n"
        "        return super().step(action)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _register_for_test(monkeypatch, "ExitsAtImport-v0", "exits_at_import:Env")
    _register_for_test(monkeypatch, "ExitsInStep-v0", "exits_in_step:Env")
    assert main(["ExitsAtImport-v0", "ExitsInStep-v0", "Echo-v0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  agentrl/ExitsAtImport-v0: could not be created: SystemExit: usage: exits_at_import [-h]" in out
    assert "FAIL  agentrl/ExitsInStep-v0" in out and "empty action (''): raised SystemExit: 4" in out
    assert "ok    agentrl/Echo-v0" in out and out.rstrip().endswith("1 passed, 2 failed")
