"""``TextEnv``: a gymnasium environment whose observations are chat messages and whose actions
are the assistant's text for one turn.

* ``reset(seed, options) -> (messages, info)``: the messages that open the episode
  (system/user); tools the model may call are in ``env.tools``.
* ``step(action) -> (messages, reward, terminated, truncated, info)``: ``action`` is the
  assistant's text; ``messages`` are the new messages to append (tool results, feedback).
  ``terminated``: the task is over. ``truncated``: a budget ended it (see ``wrappers``).

The async pair ``areset``/``astep`` is what the rollout calls. Write whichever pair suits the
environment: a subclass that implements ``reset``/``step`` gets ``areset``/``astep`` for free (run
in a worker thread, so a slow step never stalls the other episodes); a subclass that implements
``areset``/``astep`` gets a working ``reset``/``step`` outside an event loop, and inside a worker
thread that :func:`run_sync` started (a gymnasium wrapper's ``step``), where the coroutine runs
back on the caller's event loop.

Example::

    >>> class Guess(TextEnv):
    ...     def reset(self, *, seed=None, options=None):
    ...         super().reset(seed=seed)
    ...         self.target = int(self.np_random.integers(0, 10))
    ...         return [{"role": "user", "content": "Guess a digit."}], {}
    ...     def step(self, action):
    ...         won = action.strip() == str(self.target)
    ...         return [{"role": "user", "content": "yes" if won else "no"}], float(won), won, False, {}
    >>> env = Guess()
    >>> messages, info = env.reset(seed=0)
    >>> env.step("3")[1:3]
    (0.0, False)
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import gymnasium

from agentrl.env.spaces import MessagesSpace, TextSpace

Messages = list[dict[str, Any]]
ResetResult = tuple[Messages, dict[str, Any]]
StepResult = tuple[Messages, SupportsFloat, bool, bool, dict[str, Any]]

_CALLER_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "agentrl_env_caller_loop", default=None)
"""In a worker thread started by :func:`run_sync`: the event loop that awaits it."""


async def run_sync(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a worker thread, awaited: a sync ``reset``/``step`` (an env's own,
    or a gymnasium wrapper's) cannot stall the event loop's other episodes. An async
    ``areset``/``astep`` that it reaches through :class:`TextEnv`'s sync bridge runs back on this
    event loop, so the clients it opens stay bound to one loop."""
    token = _CALLER_LOOP.set(asyncio.get_running_loop())
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)  # the thread gets a copy of this context
    except SystemExit as e:  # sys.exit() in an env is its failure, not the caller's exit
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} called sys.exit({e.code!r})") from e
    finally:
        _CALLER_LOOP.reset(token)


class TextEnv(gymnasium.Env[Messages, str]):
    """Base class of every agentrl environment. Subclass it once; compose with wrappers."""

    metadata: dict[str, Any] = {"render_modes": []}
    observation_space = MessagesSpace()
    action_space = TextSpace()

    tools: Sequence[Callable[..., Any]] = ()
    """Plain typed functions the model may call; their schemas go to the chat template."""

    def __init__(self) -> None:
        # per-instance spaces, so seeding one env never touches another's RNG
        self.observation_space = MessagesSpace()
        self.action_space = TextSpace()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the async API (canonical for the rollout) ---------------------------------------
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        if _overrides(self, "reset"):
            return await run_sync(self.reset, seed=seed, options=options)
        raise NotImplementedError(f"{type(self).__name__} must implement areset() or reset()")

    async def astep(self, action: str) -> StepResult:
        if _overrides(self, "step"):
            return await run_sync(self.step, action)
        raise NotImplementedError(f"{type(self).__name__} must implement astep() or step()")

    # -- the sync API (notebooks, check_env, gymnasium tooling) --------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        if _overrides(self, "areset"):
            self.seed_rng(seed)
            return self._run(self.areset(seed=seed, options=options))
        if not _overrides(self, "reset"):
            raise NotImplementedError(f"{type(self).__name__} must implement reset() or areset()")
        # reached through super().reset(seed=seed) in a subclass's reset: seed the RNG only
        self.seed_rng(seed)
        return [], {}

    def step(self, action: str) -> StepResult:
        if _overrides(self, "astep"):
            return self._run(self.astep(action))
        raise NotImplementedError(f"{type(self).__name__} must implement step() or astep()")

    def seed_rng(self, seed: int | None) -> None:
        """Seed ``self.np_random`` as ``gymnasium.Env.reset`` does; call it from ``areset``."""
        gymnasium.Env.reset(self, seed=seed)

    def tool_schemas(self) -> list[dict[str, Any]]:
        """OpenAI-style schemas of ``self.tools`` (what the chat template declares)."""
        if not self.tools:
            return []
        from agentrl.tool import function_schema

        return [function_schema(t) for t in self.tools]

    def close(self) -> None:
        """Release resources; calling it twice is allowed."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _run(self, coro: Any) -> Any:
        """Run a coroutine of this env: on the event loop of the :func:`run_sync` that started this
        thread, else on a private loop (one per env, so async clients it opened on an earlier call
        stay bound to the same loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                f"{type(self).__name__}.reset()/step() called inside a running event loop; "
                "use `await env.areset(...)` / `await env.astep(...)` there"
            )
        caller = _CALLER_LOOP.get()
        if caller is not None and caller.is_running():
            return asyncio.run_coroutine_threadsafe(coro, caller).result()
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)


def _overrides(env: TextEnv, name: str) -> bool:
    """Does the concrete class (or a wrapper) provide its own ``name``?"""
    return getattr(type(env), name) is not getattr(TextEnv, name)
