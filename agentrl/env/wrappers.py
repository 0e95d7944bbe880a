"""Wrappers: the one place where budgets end an episode with ``truncated=True``; and gymnasium's.

A wrapper is itself a :class:`TextEnv`, forwarding both the async and the sync API, so wrappers
compose (``TurnLimit(TokenBudget(env, ...), 4)``) and the rollout treats them like any env.

Any ``gymnasium.Wrapper`` works too (``gymnasium.wrappers.TransformReward``, your own
``RewardWrapper``...): :func:`as_text_env` presents a stack of them around a :class:`TextEnv` as a
TextEnv, whose async pair runs the stack's sync ``reset``/``step`` in a worker thread
(:func:`~agentrl.env.core.run_sync`); an async-only env at the bottom of the stack still runs on
the caller's event loop. :func:`~agentrl.env.make` does this for wrappers given at registration.

Example::

    >>> from agentrl.testing.echo_env import EchoEnv
    >>> env = TurnLimit(EchoEnv(), max_turns=1)
    >>> _ = env.reset(seed=0)
    >>> env.step("no target here")[2:4]   # terminated, truncated
    (False, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import gymnasium

from agentrl.env.core import ResetResult, StepResult, TextEnv, run_sync
from agentrl.env.spaces import MessagesSpace, TextSpace


class TextEnvWrapper(TextEnv):
    """Forwards everything to ``env``; subclasses override :meth:`on_reset` / :meth:`on_step`."""

    def __init__(self, env: TextEnv):
        super().__init__()
        if not isinstance(env, TextEnv):
            raise TypeError(f"{type(self).__name__} wraps a TextEnv; got {type(env).__name__}")
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    # hooks ---------------------------------------------------------------------------
    def on_reset(self, result: ResetResult) -> ResetResult:
        return result

    def on_step(self, action: str, result: StepResult) -> StepResult:
        return result

    # forwarding ------------------------------------------------------------------------
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        return self.on_reset(await self.env.areset(seed=seed, options=options))

    async def astep(self, action: str) -> StepResult:
        return self.on_step(action, await self.env.astep(action))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        return self.on_reset(self.env.reset(seed=seed, options=options))

    def step(self, action: str) -> StepResult:
        return self.on_step(action, self.env.step(action))

    @property
    def tools(self):  # type: ignore[override]
        return self.env.tools

    @property
    def unwrapped(self) -> TextEnv:  # type: ignore[override]
        return cast(TextEnv, self.env.unwrapped)  # the innermost env of a TextEnv is a TextEnv

    @property
    def np_random(self):  # type: ignore[override]
        return self.env.np_random

    @np_random.setter
    def np_random(self, value):
        self.env.np_random = value  # the generator belongs to the wrapped env, as in gymnasium.Wrapper

    @property
    def spec(self):  # type: ignore[override]
        return self.env.spec

    @spec.setter
    def spec(self, value):
        pass  # the spec belongs to the wrapped env

    def tool_schemas(self) -> list[dict[str, Any]]:
        return self.env.tool_schemas()

    def close(self) -> None:
        self.env.close()
        super().close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{self.env!r}>"


class TurnLimit(TextEnvWrapper):
    """Truncate after ``max_turns`` assistant turns (unless the env terminated on that turn)."""

    def __init__(self, env: TextEnv, max_turns: int):
        super().__init__(env)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1; got {max_turns}")
        self.max_turns = max_turns
        self.turns = 0

    def on_reset(self, result: ResetResult) -> ResetResult:
        self.turns = 0
        return result

    def on_step(self, action: str, result: StepResult) -> StepResult:
        self.turns += 1
        obs, reward, terminated, truncated, info = result
        if not terminated and self.turns >= self.max_turns:
            truncated = True
            info = {**info, "truncated_by": "max_turns"}
        return obs, reward, terminated, truncated, info


class TokenBudget(TextEnvWrapper):
    """Truncate once the episode's text exceeds ``max_tokens`` as counted by ``count_tokens``.

    ``count_tokens`` defaults to a tokenizer-free estimate (4 characters a token); pass
    ``lambda s: len(tokenizer.encode(s, add_special_tokens=False))`` for exact counts. The
    rollout enforces the exact context budget on token ids on its own; this wrapper is for
    environments used outside it.
    """

    def __init__(self, env: TextEnv, max_tokens: int, count_tokens: Callable[[str], int] | None = None):
        super().__init__(env)
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens or (lambda s: (len(s) + 3) // 4)
        self.used = 0

    def _count_messages(self, messages: list[dict[str, Any]]) -> int:
        return sum(self.count_tokens(m.get("content") or "") for m in messages)

    def on_reset(self, result: ResetResult) -> ResetResult:
        self.used = self._count_messages(result[0])
        return result

    def on_step(self, action: str, result: StepResult) -> StepResult:
        obs, reward, terminated, truncated, info = result
        self.used += self.count_tokens(action) + self._count_messages(obs)
        if not terminated and self.used >= self.max_tokens:
            truncated = True
            info = {**info, "truncated_by": "max_tokens"}
        return obs, reward, terminated, truncated, info


class GymnasiumWrappers(TextEnv):
    """A stack of ``gymnasium.Wrapper`` around a :class:`TextEnv`, seen as a TextEnv.

    ``reset``/``step`` go through the stack as gymnasium runs them; ``areset``/``astep`` run those
    in a worker thread. Tools, ``unwrapped`` and the spec are the inner env's.

    Example::

        >>> from gymnasium.wrappers import TransformReward
        >>> from agentrl.testing.echo_env import EchoEnv
        >>> env = as_text_env(TransformReward(EchoEnv(), lambda r: 10 * r))
        >>> _ = env.reset(seed=0, options={"target": "sun"})
        >>> env.step("sun")[1]
        10.0
    """

    def __init__(self, env: gymnasium.Wrapper):
        super().__init__()
        if not isinstance(env.unwrapped, TextEnv):
            raise TypeError(f"the wrappers must wrap an agentrl TextEnv; {env!r} wraps a {type(env.unwrapped).__name__}")
        observation_space, action_space = env.observation_space, env.action_space
        if not isinstance(observation_space, MessagesSpace) or not isinstance(action_space, TextSpace):
            raise TypeError(f"the wrappers must keep the TextEnv's spaces (messages in, text out); {env!r} has "
                            f"{observation_space!r} and {action_space!r}")
        self.env = env
        self.observation_space = observation_space
        self.action_space = action_space

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        return await run_sync(self.env.reset, seed=seed, options=options)

    async def astep(self, action: str) -> StepResult:
        return await run_sync(self.env.step, action)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        return self.env.reset(seed=seed, options=options)

    def step(self, action: str) -> StepResult:
        return self.env.step(action)

    @property
    def tools(self):  # type: ignore[override]
        return self.env.unwrapped.tools

    @property
    def unwrapped(self) -> TextEnv:  # type: ignore[override]
        return cast(TextEnv, self.env.unwrapped)  # the innermost env of a TextEnv is a TextEnv

    @property
    def np_random(self):  # type: ignore[override]
        return self.env.np_random

    @np_random.setter
    def np_random(self, value):
        self.env.np_random = value  # the generator belongs to the wrapped env, as in gymnasium.Wrapper

    @property
    def spec(self):  # type: ignore[override]
        return self.env.unwrapped.spec

    @spec.setter
    def spec(self, value):
        pass  # the spec belongs to the wrapped env

    def tool_schemas(self) -> list[dict[str, Any]]:
        return self.unwrapped.tool_schemas()

    def close(self) -> None:
        self.env.close()
        super().close()

    def __repr__(self) -> str:
        return repr(self.env)


def as_text_env(env: gymnasium.Env) -> TextEnv:
    """``env`` as a :class:`TextEnv`: itself when it is one, a :class:`GymnasiumWrappers` when it is
    a stack of ``gymnasium.Wrapper`` around one; anything else is a ``TypeError``."""
    if isinstance(env, TextEnv):
        return env
    if isinstance(env, gymnasium.Wrapper) and isinstance(env.unwrapped, TextEnv):
        return GymnasiumWrappers(env)
    raise TypeError(f"expected an agentrl TextEnv, or gymnasium wrappers around one; got {type(env).__name__} "
                    f"(wrapping {type(getattr(env, 'unwrapped', env)).__name__})")
