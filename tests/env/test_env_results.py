"""An environment whose reset/step breaks the contract fails its episode with a message naming the
broken part; the rollout goes on (other episodes, the batch) and records the failure as data."""

import asyncio
import math

import numpy as np
import pytest

from agentrl.env import TextEnv
from agentrl.env.spaces import EnvResultError, check_reset_result, check_step_result
from agentrl.rollout import EpisodeRequest, RolloutConfig, run_episode
from agentrl.testing import FakeEngine

HI = [{"role": "user", "content": "hi"}]


class _Env(TextEnv):
    """Returns whatever ``step_result``/``reset_result`` say (or raises what they are)."""

    def __init__(self, step_result=None, reset_result=None):
        super().__init__()
        self.step_result = step_result if step_result is not None else (HI, 1.0, True, False, {})
        self.reset_result = reset_result if reset_result is not None else (HI, {})

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if isinstance(self.reset_result, BaseException):
            raise self.reset_result
        return self.reset_result

    def step(self, action):
        if isinstance(self.step_result, BaseException):
            raise self.step_result
        return self.step_result


BAD_STEPS = {
    "nan reward": ((HI, math.nan, True, False, {}), "reward must be a finite number; got float nan"),
    "inf reward": ((HI, -math.inf, False, False, {}), "reward must be a finite number"),
    "string reward": ((HI, "1", True, False, {}), "reward must be a finite number; got str '1'"),
    "bool reward": ((HI, True, True, False, {}), "reward must be a finite number; got bool"),
    "four values": ((HI, 1.0, True, {}), "must return (messages, reward, terminated, truncated, info)"),
    "None": ((None,), "must return (messages, reward"),
    "info list": ((HI, 0.0, True, False, [1]), "info must be a dict; got list"),
    "text observation": (("hello", 0.0, False, False, {}), "the observation must be a list of chat messages; got str"),
    "message without role": (([{"content": "x"}], 0.0, False, False, {}), "message 0: message role must be one of"),
    "int content": (([{"role": "user", "content": 5}], 0.0, False, False, {}), "content must be a str or None"),
    "int terminated": ((HI, 0.0, 1, False, {}), "terminated must be a bool; got int"),
    "nan component": ((HI, 1.0, True, False, {"reward_components": {"fmt": math.nan}}),
                      "info['reward_components']['fmt'] must be a finite number"),
    "component list": ((HI, 1.0, True, False, {"reward_components": [1]}), "must be a dict of numbers; got list"),
    "tool_calls text": ((HI, 1.0, True, False, {"tool_calls": "two"}), "info['tool_calls'] must be a finite number"),
}


@pytest.mark.parametrize("name", list(BAD_STEPS))
def test_a_broken_step_result_fails_the_episode_with_a_clear_error(template, tokenizer, name):
    result, expected = BAD_STEPS[name]
    result = None if result == (None,) else result
    env = _Env(step_result=result if result is not None else 0)
    if result is None:
        env.step = lambda action: None  # a step that forgot its return
    reply = tokenizer.encode("ok<|im_end|>", add_special_tokens=False)
    sample = asyncio.run(run_episode(FakeEngine(script=[reply] * 2), template, EpisodeRequest(env_id="my/Env-v0"),
                                     RolloutConfig(), env=env))
    assert sample.status == "failed" and sample.reward == 0.0 and sample.rewards == {}
    assert sample.error.startswith("EnvResultError: my/Env-v0 step()") and expected in sample.error
    assert sample.num_turns == 1 and sample.response_ids  # the turn the model played is kept


@pytest.mark.parametrize("result, expected", [
    (None, "must return (messages, info); got None"),
    (("hi", {}), "the observation must be a list of chat messages; got str"),
    ((HI, None), "info must be a dict; got NoneType"),
    (([], {}), "the opening observation has no messages"),
])
def test_a_broken_reset_result_fails_the_episode(template, result, expected):
    env = _Env()
    env.reset = lambda *, seed=None, options=None: result
    sample = asyncio.run(run_episode(FakeEngine(script=[]), template, EpisodeRequest(env_id="my/Env-v0"),
                                     RolloutConfig(), env=env))
    assert sample.status == "failed" and expected in sample.error and "reset()" in sample.error


def test_sys_exit_in_a_sync_step_fails_the_episode_not_the_process(template, tokenizer):
    reply = tokenizer.encode("ok<|im_end|>", add_special_tokens=False)
    sample = asyncio.run(run_episode(FakeEngine(script=[reply]), template, EpisodeRequest(env_id="x"),
                                     RolloutConfig(), env=_Env(step_result=SystemExit(3))))
    assert sample.status == "failed" and "called sys.exit(3)" in sample.error


class _AsyncExitEnv(TextEnv):
    """An async environment whose ``astep`` (or ``areset``) calls sys.exit()."""

    def __init__(self, where="step"):
        super().__init__()
        self.where = where

    async def areset(self, *, seed=None, options=None):
        if self.where == "reset":
            raise SystemExit("bye")
        return HI, {}

    async def astep(self, action):
        raise SystemExit(4)


@pytest.mark.parametrize("where, says", [("step", "step() called sys.exit(4)"), ("reset", "reset() called sys.exit('bye')")])
def test_sys_exit_in_an_async_env_fails_its_episode_and_spares_the_others(template, tokenizer, where, says):
    """With an episode timeout the episode runs as a task of its own, where a SystemExit would stop the event loop."""
    reply = tokenizer.encode("ok<|im_end|>", add_special_tokens=False)

    async def both():
        engine = FakeEngine(script=[reply] * 4)
        config = RolloutConfig(episode_timeout=30)
        return await asyncio.gather(
            run_episode(engine, template, EpisodeRequest(env_id="x"), config, env=_AsyncExitEnv(where)),
            run_episode(engine, template, EpisodeRequest(env_id="y"), config, env=_Env()))

    broken, fine = asyncio.run(both())
    assert broken.status == "failed" and says in broken.error
    assert fine.status == "ok" and fine.reward == 1.0


def test_good_results_pass_and_numpy_scalars_become_python_ones():
    messages, reward, terminated, truncated, info = check_step_result(
        (HI, np.float32(0.5), np.bool_(True), False, {"reward_components": {"a": np.int64(1)}}))
    assert (reward, terminated, truncated) == (0.5, True, False)
    assert type(reward) is float and type(terminated) is bool
    assert check_reset_result((HI, {"k": 1})) == (HI, {"k": 1})
    with pytest.raises(EnvResultError, match=r"reset\(\): the opening observation has no messages"):
        check_reset_result(([], {}))


async def _agent(client, task):
    return 0.0


def test_agent_env_tasks_file_names_the_broken_line(tmp_path):
    from agentrl.env.agent import AgentEnv

    path = tmp_path / "tasks.jsonl"
    path.write_text('{"q": 1}\n\n{"q": 2\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f"tasks file {path}, line 3: not valid JSON"):
        AgentEnv(_agent, tasks=str(path))
    path.write_text('{"q": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: a task must be a JSON object; got list"):
        AgentEnv(_agent, tasks=str(path))
    with pytest.raises(TypeError, match="tasks must be dicts"):
        AgentEnv(_agent, tasks=["q"])


def test_agent_result_with_info_that_is_not_a_dict_is_an_error():
    from agentrl.env.agent import _outcome

    assert _outcome({"reward": 1, "info": {"k": 1}}) == (1.0, {}, {"k": 1})
    with pytest.raises(ValueError, match="'info' must be a dict; got str"):
        _outcome({"reward": 1.0, "info": "done"})
