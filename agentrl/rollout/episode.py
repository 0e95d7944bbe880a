"""The one multi-turn episode loop.

reset -> prompt tokens -> generate -> step -> observation tokens (mask 0) -> generate -> ...
until the environment terminates, a budget truncates (turns, context tokens, the env's own
wrappers), the engine aborts, or something fails. Whatever happens, the episode comes back as
a :class:`~agentrl.types.Sample` with its tokens so far and a status: failures are data.

Example (a scripted engine and the echo environment)::

    >>> import asyncio
    >>> from agentrl.testing import FakeEngine
    >>> from agentrl.chat import ChatTemplate
    >>> from agentrl.models import load_tokenizer
    >>> tok = load_tokenizer("tiny-qwen2")                                   # doctest: +SKIP
    >>> reply = tok.encode("apple<|im_end|>", add_special_tokens=False)        # doctest: +SKIP
    >>> request = EpisodeRequest(env_id="agentrl/Echo-v0", options={"target": "apple"})
    >>> sample = asyncio.run(run_episode(FakeEngine(script=[reply]), ChatTemplate(tok), request,
    ...                                  RolloutConfig()))                      # doctest: +SKIP
    >>> sample.reward, sample.status                                          # doctest: +SKIP
    (1.0, 'ok')
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agentrl.engine.base import Engine, EngineError
from agentrl.rollout.config import RolloutConfig
from agentrl.env import TextEnv, as_text_env, make
from agentrl.env.spaces import check_reset_result, check_step_result
from agentrl.types import Sample

log = logging.getLogger(__name__)

RewardFn = Callable[[Sample], "float | dict[str, float] | Awaitable[float | dict[str, float]]"]


@dataclass
class EpisodeRequest:
    """One episode to run: which environment, how to reset it, where the result belongs."""

    env_id: str
    options: dict[str, Any] = field(default_factory=dict)
    """Passed to ``env.reset(options=...)`` (a dataset row's fields, see ``PromptRow``)."""
    env_seed: int | None = None
    """Reset seed. Every sample of a group gets the same one, so they face the same task."""
    sampling_seed: int | None = None
    """Engine sampling seed for this sample (None: unseeded)."""
    group_id: int = 0
    sample_index: int = 0
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


def engine_failed(sample: Sample) -> bool:
    """Whether the engine, not the model or its environment, failed this episode (an
    :class:`~agentrl.engine.base.EngineError`: a dead or unreachable server, a closed engine).
    Such an episode says nothing about the model: evaluation runs it again, it is not scored."""
    return sample.status == "failed" and (sample.error or "").startswith(f"{EngineError.__name__}: ")


TIMEOUT_ERROR = "episode timed out"
"""How the error of an episode stopped by ``episode_timeout`` begins."""


def timed_out(sample: Sample) -> bool:
    """Whether the episode was stopped by ``--episode-timeout``: time ran out (a busy machine, a slow
    tool), which says nothing about whether the answer would have been right; training and evaluation
    report these episodes apart from wrong answers."""
    return sample.status == "failed" and (sample.error or "").startswith(TIMEOUT_ERROR)


class _Partial:
    """What an episode has produced so far; survives a timeout or a crash."""

    def __init__(self) -> None:
        self.conversation: Any = None
        self.reward = 0.0
        self.info: dict[str, Any] = {}
        self.weight_versions: list[int] = []
        self.metrics: dict[str, float] = {"time_generate": 0.0, "time_env": 0.0, "tool_calls": 0.0,
                                          "tool_errors": 0.0}
        self.turns = 0
        self.turn_starts: list[int] = []
        self.turn_rewards: list[float] = []
        self.state_keys: list[str | None] = []
        self.state_key: str | None = None
        """The state the next turn acts in (``info["state_key"]`` of the latest reset or step)."""
        self.components: dict[str, float] = {}
        """The environment's named reward components (``info["reward_components"]``), summed over the turns."""


def state_key(info: dict[str, Any]) -> str | None:
    """An environment's ``info["state_key"]`` as the string a :class:`Sample` records (None: none given)."""
    key = info.get("state_key")
    return None if key is None else str(key)


async def run_episode(
    engine: Engine,
    template: Any,
    request: EpisodeRequest,
    config: RolloutConfig,
    *,
    env: TextEnv | None = None,
    reward_fn: RewardFn | None = None,
) -> Sample:
    """Run one episode and return it as a validated :class:`Sample` (never raises for
    environment, tool or engine failures: they come back as ``status="failed"``). ``env``: a
    TextEnv, or gymnasium wrappers around one (made from ``request.env_id`` when None)."""
    partial = _Partial()
    start = time.perf_counter()
    own_env = env is None
    status, error = "ok", None
    try:
        if env is None:
            env = make(request.env_id, max_turns=config.max_turns, **config.env_kwargs)
        else:
            env = as_text_env(env)  # a gymnasium.Wrapper's sync step runs in a worker thread
        run_agent = getattr(env.unwrapped, "run_agent", None)  # an agent program (agentrl.env.agent.AgentEnv)
        coro = (run_agent(engine, template, request, config, partial, outer=env) if run_agent is not None
                else _loop(engine, template, env, request, config, partial))
        status = await (asyncio.wait_for(coro, config.episode_timeout) if config.episode_timeout else coro)
    except asyncio.TimeoutError:
        status, error = "failed", f"{TIMEOUT_ERROR} after {config.episode_timeout:.0f}s"
    except asyncio.CancelledError:
        raise
    except Exception as e:  # an env, tool or engine failure is data
        status, error = "failed", f"{type(e).__name__}: {e}"
        log.debug("episode failed", exc_info=True)
    except SystemExit as e:  # an environment's constructor that calls sys.exit() fails its episode, not the run
        status, error = "failed", f"{request.env_id} called sys.exit({e.code!r})"
    finally:
        if own_env and env is not None:
            try:
                env.close()
            except Exception as e:
                log.warning("closing %s failed: %s", request.env_id, e)
    sample = _to_sample(partial, request, status, error)
    sample.metrics["time_total"] = time.perf_counter() - start
    if reward_fn is not None and sample.status in ("ok", "truncated"):
        await _apply_reward_fn(reward_fn, sample)
    sample.validate()
    return sample


async def _loop(engine: Engine, template: Any, env: TextEnv, request: EpisodeRequest,
                config: RolloutConfig, partial: _Partial) -> str:
    from agentrl.chat import TokenConversation

    t = time.perf_counter()
    messages, info = check_reset_result(await _env_call(env.areset(seed=request.env_seed, options=request.options),
                                                        f"{request.env_id} reset()"), f"{request.env_id} reset()")
    partial.metrics["time_env"] += time.perf_counter() - t
    partial.info = dict(info)
    partial.state_key = state_key(info)
    conv = TokenConversation(template, messages, tools=env.tool_schemas() or None)
    partial.conversation = conv
    prompt_length = conv.num_tokens
    stop_ids = sorted(set(config.sampling.stop_token_ids) | set(template.stop_token_ids))
    # request ids unique per episode, even when several rollouts (training, eval) share an engine
    episode_id = f"g{request.group_id}-s{request.sample_index}-{secrets.token_hex(4)}"
    while True:
        budget = config.max_context_tokens - conv.num_tokens
        if budget <= 0:
            return "truncated"
        sampling = config.sampling.replace(
            max_new_tokens=min(config.max_new_tokens_per_turn, budget),
            stop_token_ids=stop_ids,
            seed=None if request.sampling_seed is None else request.sampling_seed + 7919 * partial.turns,
        )
        t = time.perf_counter()
        completion = await engine.generate(conv.tokens, sampling,
                                           rid=f"{episode_id}-t{partial.turns}")
        partial.metrics["time_generate"] += time.perf_counter() - t
        if completion.finish_reason == "abort":
            return "aborted"
        partial.turn_starts.append(conv.num_tokens - prompt_length)
        partial.state_keys.append(partial.state_key)
        conv.add_completion(completion.token_ids, completion.logprobs)
        partial.weight_versions.append(completion.weight_version)
        partial.turns += 1
        action = conv.messages[-1]["content"]
        t = time.perf_counter()
        observation, reward, terminated, truncated, info = check_step_result(
            await _env_call(env.astep(action), f"{request.env_id} step()"), f"{request.env_id} step()")
        partial.metrics["time_env"] += time.perf_counter() - t
        partial.reward += float(reward)
        partial.turn_rewards.append(float(reward))
        partial.info = dict(info)
        partial.state_key = state_key(info)
        partial.metrics["tool_calls"] += float(info.get("tool_calls", 0) or 0)
        partial.metrics["tool_errors"] += float(info.get("tool_errors", 0) or 0)
        for name, value in (info.get("reward_components") or {}).items():  # agentrl.env.shaping
            partial.components[name] = partial.components.get(name, 0.0) + float(value)
        if terminated:  # an answer cut by the token budget still counts as truncated (overlong filters)
            return "truncated" if completion.finish_reason == "length" else "ok"
        if truncated:
            return "truncated"
        if completion.finish_reason == "length" and conv.num_tokens >= config.max_context_tokens:
            return "truncated"
        if not observation:
            raise RuntimeError(f"{request.env_id} returned no observation messages but did not end the episode")
        conv.add_observation(observation)


def _to_sample(p: _Partial, request: EpisodeRequest, status: str, error: str | None) -> Sample:
    conv = p.conversation
    fields = conv.to_sample_fields() if conv is not None else {
        "prompt_ids": [], "response_ids": [], "loss_mask": [], "rollout_logprobs": []}
    metrics = dict(p.metrics)
    if conv is not None:
        metrics["generated_tokens"] = float(sum(conv.loss_mask))
        metrics["observation_tokens"] = float(len(conv.loss_mask) - sum(conv.loss_mask))
    metrics["turns"] = float(p.turns)
    # a failed episode scores nothing; a turn whose step never returned earned nothing
    turn_rewards = p.turn_rewards if status != "failed" else []
    return Sample(
        **fields,
        reward=p.reward if status != "failed" else 0.0,
        rewards=dict(p.components) if status != "failed" else {},
        status=status,
        error=error,
        group_id=request.group_id,
        sample_index=request.sample_index,
        env_id=request.env_id,
        label=request.label,
        messages=list(conv.messages) if conv is not None else [],
        num_turns=p.turns,
        turn_starts=p.turn_starts,
        turn_rewards=turn_rewards + [0.0] * (p.turns - len(turn_rewards)),
        state_keys=p.state_keys,
        weight_versions=p.weight_versions,
        metrics=metrics,
        metadata={**request.metadata, "env_info": _jsonable(p.info)},
    )


async def _apply_reward_fn(reward_fn: RewardFn, sample: Sample) -> None:
    """A user's reward replaces the environment's (``--custom-rm-path``)."""
    try:
        value = reward_fn(sample)
        if inspect.isawaitable(value):
            value = await value
        if isinstance(value, dict):
            sample.rewards = {k: float(v) for k, v in value.items()}
            sample.reward = sample.rewards.get("reward", sum(sample.rewards.values()))
        else:
            sample.reward = float(value)
        if not all(math.isfinite(v) for v in [sample.reward, *sample.rewards.values()]):
            raise ValueError(f"non-finite reward {sample.reward!r} / {sample.rewards!r}")
        sample.set_outcome_reward(sample.reward)  # it scores the whole episode: the last turn's
    except Exception as e:
        sample.status, sample.error = "failed", f"reward function failed: {type(e).__name__}: {e}"
        sample.set_outcome_reward(0.0)


async def _env_call(step: Any, what: str) -> Any:
    """Await an environment's ``areset``/``astep``; its ``sys.exit()`` becomes its failure (a SystemExit that
    reached the episode's task would stop the caller's event loop)."""
    try:
        return await step
    except SystemExit as e:
        raise RuntimeError(f"{what} called sys.exit({e.code!r})") from None


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    import json

    out = {}
    for k, v in info.items():
        try:
            json.dumps(v)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = repr(v)
    return out
