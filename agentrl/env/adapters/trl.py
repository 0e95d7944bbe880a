"""A class written for TRL's ``GRPOTrainer(environment_factory=...)`` as an agentrl environment.

The contract (no base class): the class is built with no arguments, once per episode; ``reset(**row)``
starts the episode and may return an observation (text); every public method is a tool the model
calls (typed parameters, a docstring with ``Args:``); ``get_reward()`` scores the finished episode.
Register it with ``register("Wordle-v0", "agentrl.env.adapters.trl:TRLEnv", factory="my_pkg.wordle:Wordle")``
or make one by hand, ``TRLEnv(Wordle)``. The mapping:

* ``reset(seed, options)``: a new instance; its ``reset`` gets the row's keys that it names (all of
  them when it takes ``**kwargs``); the opening message is the row's ``prompt`` followed by the
  observation ``reset`` returned (either may be absent, not both).
* Tools: the public methods, called in hermes ``<tool_call>{"name", "arguments"}</tool_call>`` format
  (their schemas go to the chat template); a result is a ``tool`` message, an exception or bad
  arguments an ``Error: ...`` tool message (:class:`~agentrl.tool.ToolExecutor`), with a timeout.
* A reply with no tool call ends the episode (``terminated``) with reward ``get_reward()``
  (``get_reward(reply)`` when it takes an argument); tool turns earn 0.
* Not carried over: TRL's reward functions over a batch of ``environments`` (write the score into
  ``get_reward``), and TRL's own generation settings (the agentrl run's apply).

Example::

    >>> class Counter:
    ...     def reset(self, target: int = 3):
    ...         self.n, self.target = 0, target
    ...         return f"Reach {target} by calling increment."
    ...     def increment(self) -> str:
    ...         '''Add one to the counter.'''
    ...         self.n += 1
    ...         return str(self.n)
    ...     def get_reward(self) -> float:
    ...         return float(self.n == self.target)
    >>> env = TRLEnv(Counter)
    >>> messages, info = env.reset(options={"target": 1})
    >>> env.step('<tool_call>{"name": "increment", "arguments": {}}</tool_call>')[0]
    [{'role': 'tool', 'name': 'increment', 'content': '1'}]
    >>> env.step("done")[1:3]
    (1.0, True)
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from agentrl.env.core import TextEnv
from agentrl.tool import HermesParser, ToolExecutor

_NOT_TOOLS = frozenset({"reset", "get_reward", "close", "step"})


class TRLEnv(TextEnv):
    """An ``environment_factory`` class of TRL as an environment (see the module docstring).

    Args:
        factory: the class (or a ``"module:Class"`` string, or any callable making one instance).
        tool_timeout: seconds a tool call may take.
        max_tool_calls_per_turn: calls run per reply; further ones are not run.
    """

    def __init__(self, factory: Callable[[], Any] | str, *, tool_timeout: float = 10.0,
                 max_tool_calls_per_turn: int = 8):
        super().__init__()
        if isinstance(factory, str):
            from agentrl.utils.imports import load_object

            factory = load_object(factory, what="TRLEnv factory")
        if not callable(factory):
            raise TypeError(f"factory must be a class or a callable making an environment; got {factory!r}")
        self.factory = factory
        cls = factory if isinstance(factory, type) else type(factory())
        for required in ("reset", "get_reward"):
            if not callable(getattr(cls, required, None)):
                raise TypeError(f"{cls.__name__} lacks {required}(): TRL's environment contract is reset(), "
                                "public methods as tools, get_reward()")
        names = sorted(n for n in dir(cls) if not n.startswith("_") and n not in _NOT_TOOLS  # inherited ones too
                       and callable(getattr(cls, n)))
        self.inner: Any = None
        self.tools = tuple(self._tool(cls, n) for n in names)
        self.executor = ToolExecutor(self.tools, timeout=tool_timeout, max_concurrency=max_tool_calls_per_turn)
        self.max_calls = max_tool_calls_per_turn
        self.parser = HermesParser()

    def _tool(self, cls: type, name: str) -> Callable[..., Any]:
        method = getattr(cls, name)
        signature = inspect.signature(method)
        params = list(signature.parameters.values())[1:]  # without self

        def call(**kwargs: Any) -> Any:
            if self.inner is None:
                raise RuntimeError("the episode has not started")
            return getattr(self.inner, name)(**kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = method.__doc__ or f"{name} of {cls.__name__}."
        call.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        call.__annotations__ = {k: v for k, v in getattr(method, "__annotations__", {}).items() if k != "self"}
        return call

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        row = dict(options or {})
        self.inner = self.factory()
        observation = self.inner.reset(**_accepted(self.inner.reset, row))
        parts = [str(p) for p in (row.get("prompt"), observation) if p]
        if not parts:
            raise ValueError("the opening message is empty: give the row a 'prompt' or return text from reset()")
        return [{"role": "user", "content": "\n\n".join(parts)}], {"tools": [t.__name__ for t in self.tools]}

    async def astep(self, action: str):
        if self.inner is None:
            raise RuntimeError("call reset() before step()")
        calls = self.parser.parse(action)
        if calls:
            results = await self.executor.execute(calls[: self.max_calls])
            errors = sum(1 for r in results if r.error_kind)
            return ([r.to_message() for r in results], 0.0, False, False,
                    {"tool_calls": len(results), "tool_errors": errors})
        reward = await asyncio.to_thread(self._reward, action)
        return [], reward, True, False, {"reward": reward}

    def _reward(self, action: str) -> float:
        get_reward = self.inner.get_reward
        takes_reply = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                          for p in inspect.signature(get_reward).parameters.values())
        return float(get_reward(action) if takes_reply else get_reward())

    def close(self) -> None:
        inner, self.inner = self.inner, None
        if inner is not None and callable(getattr(inner, "close", None)):
            inner.close()
        super().close()


def _accepted(fn: Callable[..., Any], row: dict[str, Any]) -> dict[str, Any]:
    """The row's keys that ``fn`` takes (every key when it has ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return row
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in row.items() if k in names}
