"""gymnasium wrappers around agentrl environments: through the async API, off the event loop, from
the registry, in check_env, in an episode and in a training run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import gymnasium
import pytest

from agentrl.env import GymnasiumWrappers, TextEnv, TurnLimit, as_text_env, check_env, make, register
from agentrl.testing.echo_env import EchoEnv

ROOT = Path(__file__).resolve().parents[2]


class Bonus(gymnasium.RewardWrapper):
    """A user's reward wrapper: adds ``bonus`` to every reward and notes the thread it ran on."""

    def __init__(self, env, bonus: float = 1.0):
        super().__init__(env)
        self.bonus = bonus
        self.threads: set[str] = set()

    def reward(self, reward):
        self.threads.add(threading.current_thread().name)
        return reward + self.bonus


class AsyncOnly(TextEnv):
    """Implements only the async pair, and records the event loop it ran on."""

    loops: list = []

    async def areset(self, *, seed=None, options=None):
        self.seed_rng(seed)
        AsyncOnly.loops.append(asyncio.get_running_loop())
        return [{"role": "user", "content": "say ok"}], {}

    async def astep(self, action):
        AsyncOnly.loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        ok = action.strip() == "ok"
        return [{"role": "user", "content": "yes" if ok else "no"}], float(ok), ok, False, {}


@pytest.fixture
def registered():
    """Register ids for one test and remove them afterwards."""
    ids = []

    def reg(env_id, entry_point, **kwargs):
        register(env_id, entry_point, **kwargs)
        ids.append(f"agentrl/{env_id}")

    yield reg
    for env_id in ids:
        gymnasium.registry.pop(env_id, None)


def test_async_calls_go_through_a_gymnasium_wrapper():
    env = as_text_env(Bonus(EchoEnv(), bonus=2.0))
    assert isinstance(env, GymnasiumWrappers) and isinstance(env.unwrapped, EchoEnv)

    async def run():
        obs, info = await env.areset(seed=0, options={"target": "cloud"})
        return obs, await env.astep("cloud")

    obs, (_, reward, terminated, _, _) = asyncio.run(run())
    assert "cloud" in obs[0]["content"] and (reward, terminated) == (3.0, True)
    assert env.step("cloud")[1] == 3.0  # the sync pair goes through the same stack
    assert as_text_env(env) is env and env.tool_schemas() == []
    with pytest.raises(TypeError, match="TextEnv"):
        as_text_env(gymnasium.make("FrozenLake-v1"))


def test_a_wrappers_sync_step_runs_in_a_thread_and_an_async_env_below_it_on_the_callers_loop():
    wrapper = Bonus(AsyncOnly())
    env = as_text_env(wrapper)
    AsyncOnly.loops = []

    async def run():
        await env.areset(seed=0)
        return asyncio.get_running_loop(), await env.astep("ok")

    loop, (_, reward, *_) = asyncio.run(run())
    assert reward == 2.0
    assert wrapper.threads and threading.main_thread().name not in wrapper.threads
    assert AsyncOnly.loops == [loop, loop]  # the env's coroutines ran on the caller's loop
    assert env.step("ok")[1] == 2.0 and AsyncOnly.loops[-1] is not loop  # outside a loop: the env's own


class WaitsForASignal(EchoEnv):
    """A sync step that blocks until another coroutine has run: on the event loop it would deadlock."""

    signal = None

    def step(self, action):
        ran = self.signal.wait(timeout=30)
        return [{"role": "user", "content": "done"}], float(ran), True, False, {"other_coroutine_ran": ran}


@pytest.mark.parametrize("wrap", [False, True], ids=["sync env", "gymnasium wrapper"])
def test_a_blocking_sync_step_does_not_stall_the_event_loop(wrap):
    env = WaitsForASignal()
    env.signal = threading.Event()
    env = as_text_env(Bonus(env, bonus=0.0)) if wrap else env

    async def run():
        await env.areset(seed=0)
        step = asyncio.ensure_future(env.astep("anything"))
        await asyncio.sleep(0)  # let the step start; the loop must stay free to run this coroutine
        env.unwrapped.signal.set()
        return await step

    assert asyncio.run(run())[4] == {"other_coroutine_ran": True}


def test_registered_wrappers_reach_make_and_gymnasium_make(registered):
    registered("BonusEcho-v0", "agentrl.testing.echo_env:EchoEnv", max_turns=2,
               wrappers=[(Bonus, {"bonus": 0.5}), ("gymnasium.wrappers:TransformReward", {"func": lambda r: 10 * r})])
    env = make("BonusEcho-v0")
    assert isinstance(env, TurnLimit) and env.max_turns == 2  # our budget outermost
    assert isinstance(env.env, GymnasiumWrappers) and isinstance(env.unwrapped, EchoEnv)
    env.reset(seed=0, options={"target": "sun"})
    assert env.step("sun")[1] == 15.0  # (1 + 0.5) * 10: innermost first
    native = gymnasium.make("agentrl/BonusEcho-v0")
    native.reset(seed=0, options={"target": "sun"})
    assert native.step("sun")[1] == 15.0
    with pytest.raises(ValueError, match="gymnasium.Wrapper subclass or 'module:Class'"):
        register("Bad-v0", "agentrl.testing.echo_env:EchoEnv", wrappers=[lambda env: env])

    class Local(Bonus):
        pass

    with pytest.raises(ValueError, match="define it at module level"):
        register("Bad-v0", "agentrl.testing.echo_env:EchoEnv", wrappers=[Local])
    assert "agentrl/Bad-v0" not in gymnasium.registry


def make_shaped_echo(**kwargs):
    """An entry point that returns a wrapped env."""
    return Bonus(EchoEnv(**kwargs), bonus=-1.0)


def test_an_entry_point_may_return_a_wrapped_env(registered):
    registered("ShapedEcho-v0", f"{__name__}:make_shaped_echo")
    env = make("ShapedEcho-v0")
    env.reset(seed=0, options={"target": "sun"})
    assert env.step("moon")[1] == -1.0


def test_check_env_checks_the_wrapped_env(registered):
    report = check_env(Bonus(EchoEnv()))
    assert report.ok, report.problems
    registered("BonusEcho-v0", "agentrl.testing.echo_env:EchoEnv", wrappers=[Bonus])
    report = check_env(lambda: make("BonusEcho-v0"))
    assert report.ok, report.problems

    class NanBonus(Bonus):
        def reward(self, reward):
            return float("nan")

    report = check_env(lambda: NanBonus(EchoEnv()), gymnasium_checks=False)
    assert any("reward must be a finite number" in p for p in report.problems), report.problems
    assert any(p.startswith("async API") for p in report.problems)  # through the async bridge too


def test_check_env_cli_on_a_registered_wrapper(tmp_path):
    (tmp_path / "shaped_envs.py").write_text(
        "import gymnasium\n"
        "from agentrl.env import register\n"
        "class Penalty(gymnasium.RewardWrapper):\n"
        "    def reward(self, reward):\n"
        "        return reward - 0.1\n"
        "register('PenaltyEcho-v0', 'agentrl.testing.echo_env:EchoEnv', max_turns=3, wrappers=['shaped_envs:Penalty'])\n")
    code = ("import sys; sys.path.insert(0, %r); import shaped_envs;"
            "from agentrl.cli import main; sys.exit(main(['check-env', 'PenaltyEcho-v0']))" % str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    agentrl/PenaltyEcho-v0" in done.stdout


async def test_an_episode_runs_through_a_gymnasium_wrapper(tokenizer):
    from agentrl.chat import ChatTemplate
    from agentrl.rollout.episode import EpisodeRequest, RolloutConfig, run_episode
    from agentrl.testing import FakeEngine

    reply = tokenizer.encode("apple<|im_end|>", add_special_tokens=False)
    request = EpisodeRequest(env_id="agentrl/Echo-v0", options={"target": "apple"})
    sample = await run_episode(FakeEngine(script=[reply]), ChatTemplate(tokenizer), request, RolloutConfig(),
                               env=Bonus(EchoEnv(), bonus=0.25))
    assert (sample.status, sample.reward) == ("ok", 1.25)


def test_a_reward_wrapper_takes_effect_in_training_and_its_evaluation(tmp_path, monkeypatch, registered):
    """The quickstart's loop on a tiny model, with the Math env registered behind gymnasium's
    TransformReward (+10): every rollout and held-out reward carries the shift."""
    from agentrl.config import parse_args
    from agentrl.loop import train

    monkeypatch.chdir(ROOT)
    registered("MathPlusTen-v0", "envs.math:MathEnv",
               wrappers=[("gymnasium.wrappers:TransformReward", {"func": lambda r: r + 10.0})])
    out = tmp_path / "run"
    train(parse_args([
        "--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--env", "agentrl/MathPlusTen-v0",
        "--num-rollout", "1", "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
        "--rollout-max-response-len", "4", "--eval-max-prompts", "2", "--eval-interval", "1",
        "--output-dir", str(out), "--save", str(tmp_path / "ckpt")]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rollout = [r for r in rows if "rollout/reward_mean" in r]
    evals = {k: v for r in rows for k, v in r.items() if k.startswith("eval/") and k.endswith("reward_mean")}
    assert rollout and all(10.0 <= r["rollout/reward_mean"] <= 11.0 for r in rollout), rollout
    assert evals and all(10.0 <= v <= 11.0 for v in evals.values()), evals
