"""Run parsed tool calls: argument checks, timeouts, a concurrency limit, errors as messages.

Nothing a tool or a model does makes :meth:`ToolExecutor.execute` raise: unknown tools, bad
arguments, malformed calls, exceptions and timeouts all come back as a :class:`ToolResult` whose
``content`` tells the model what went wrong, and are counted in :attr:`ToolExecutor.stats`.

Sync tools run in a worker thread (``asyncio.to_thread``), async tools are awaited; each call
gets ``asyncio.wait_for(timeout)``, and one semaphore bounds the calls in flight. A timed-out
sync tool cannot be interrupted: its thread runs on in the background (use async tools or a
subprocess, as :mod:`tools.python_exec` does, for work that must really stop).

Example::

    >>> import asyncio
    >>> def add(a: int, b: int = 1) -> int:
    ...     '''Add two integers.
    ...
    ...     Args:
    ...         a: First addend.
    ...         b: Second addend.
    ...     '''
    ...     return a + b
    >>> ex = ToolExecutor([add], timeout=5.0)
    >>> calls = [ToolCall("add", {"a": 2, "b": 3}), ToolCall("add", {"a": "x"}), ToolCall("mul", {})]
    >>> [r.content for r in asyncio.run(ex.execute(calls))]  # doctest: +NORMALIZE_WHITESPACE
    ['5', "Error: bad arguments for tool 'add': argument 'a' must be integer, got string 'x'.
      Usage: add(a: integer, b: integer = 1)", "Error: unknown tool 'mul'. Available tools: add"]
    >>> ex.stats["bad_arguments"], ex.stats["unknown_tool"], ex.stats["calls"]
    (1, 1, 3)
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.tool.parsers import ToolCall
from agentrl.tool.schema import function_schema, tool_name, type_hints
from agentrl.tool.validation import ArgumentError, describe, to_python, validate_arguments

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
"""Longest part of an error message that quotes the call or the tool (argument problems, an exception's
text); a whole error message is cut to twice this, whatever ``max_result_chars`` says."""
ERROR_KINDS: tuple[str, ...] = ("parse_error", "unknown_tool", "bad_arguments", "exception", "timeout")
"""Every ``ToolResult.error_kind`` (and ``stats`` key besides ``calls`` and ``errors``)."""


@dataclass
class ToolResult:
    """The outcome of one tool call."""

    call: ToolCall
    """The call as parsed."""
    content: str
    """The text the model reads: the tool's output, or an ``Error: ...`` explanation."""
    ok: bool
    """The tool ran and returned."""
    error_kind: str | None
    """One of :data:`ERROR_KINDS`, ``None`` when ``ok``."""
    seconds: float
    """Wall-clock time of the call."""

    def to_message(self) -> dict[str, str]:
        """The chat message that answers the call: ``{"role": "tool", "name": ..., "content": ...}``."""
        return {"role": "tool", "name": self.call.name, "content": self.content}


def summarize(results: Iterable[ToolResult]) -> dict[str, int]:
    """Counts of calls, errors and each error kind in ``results`` (for per-episode metrics)."""
    counts = dict.fromkeys(("calls", "errors", *ERROR_KINDS), 0)
    for r in results:
        counts["calls"] += 1
        if r.error_kind:
            counts["errors"] += 1
            counts[r.error_kind] += 1
    return counts


@dataclass(frozen=True)
class _Tool:
    fn: Callable[..., Any]
    schema: dict[str, Any]
    hints: dict[str, Any]
    is_async: bool

    @property
    def usage(self) -> str:
        fn = self.schema["function"]
        props, required = fn["parameters"]["properties"], fn["parameters"]["required"]
        parts = [f"{k}: {describe(s)}" + ("" if k in required else f" = {json.dumps(s.get('default'))}")
                 for k, s in props.items()]
        return f"{fn['name']}({', '.join(parts)})"


class ToolExecutor:
    """Executes tool calls against a fixed set of tools.

    Args:
        tools: Tool functions (named by ``__name__``) or a mapping name -> function.
        timeout: Seconds each call may take.
        max_concurrency: Calls in flight at once, across every ``execute`` on this executor.
        max_result_chars: Longer tool outputs are cut (head and tail kept); ``None`` keeps all.
    """

    def __init__(self, tools: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]],
                 timeout: float = 10.0, max_concurrency: int = 8, max_result_chars: int | None = 16_000) -> None:
        if timeout <= 0 or max_concurrency < 1:
            raise ValueError(f"expected timeout > 0 and max_concurrency >= 1, got {timeout!r}, {max_concurrency!r}")
        named = tools.items() if isinstance(tools, Mapping) else [(tool_name(f), f) for f in tools]
        self._tools: dict[str, _Tool] = {}
        for name, fn in named:
            if name in self._tools:
                raise ValueError(f"two tools are named {name!r}; tool names must be unique")
            self._tools[name] = _Tool(fn, function_schema(fn, name), type_hints(fn),
                                      _is_async(fn))
        self.timeout, self.max_concurrency, self.max_result_chars = timeout, max_concurrency, max_result_chars
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._stats = dict.fromkeys(("calls", "errors", *ERROR_KINDS), 0)

    @property
    def names(self) -> list[str]:
        """Tool names, in the order given."""
        return list(self._tools)

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI-style schemas of every tool (for the chat template's ``tools=``)."""
        return [t.schema for t in self._tools.values()]

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the counters: ``calls``, ``errors`` and one per :data:`ERROR_KINDS`."""
        return dict(self._stats)

    def reset_stats(self) -> None:
        """Set every counter back to 0."""
        self._stats = dict.fromkeys(self._stats, 0)

    async def execute(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Run ``calls`` concurrently (within ``max_concurrency``); results in call order."""
        return list(await asyncio.gather(*(self.execute_one(c) for c in calls)))

    def execute_sync(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Blocking :meth:`execute` for code outside an event loop."""
        return asyncio.run(self.execute(calls))

    async def execute_one(self, call: ToolCall) -> ToolResult:
        """Run one call; never raises (except for cancellation of the caller)."""
        start = time.monotonic()
        result = await self._run(call, start)
        self._stats["calls"] += 1
        if result.error_kind:
            self._stats["errors"] += 1
            self._stats[result.error_kind] += 1
        return result

    async def _run(self, call: ToolCall, start: float) -> ToolResult:
        def fail(kind: str, message: str) -> ToolResult:  # a message can quote the model's text: bounded too
            return ToolResult(call, _clip(f"Error: {message}", 2 * MAX_ERROR_CHARS), False, kind,
                              time.monotonic() - start)

        if call.error is not None:
            return fail("parse_error", f"malformed tool call: {call.error}")
        tool = self._tools.get(call.name)
        if tool is None:
            close = difflib.get_close_matches(call.name, self.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return fail("unknown_tool", f"unknown tool {_quote(call.name)}{hint}. Available tools: {', '.join(self.names)}")
        try:
            args = validate_arguments(tool.schema["function"]["parameters"], call.arguments)
            args = {k: to_python(v, tool.hints.get(k, Any)) for k, v in args.items()}
        except (ArgumentError, TypeError, ValueError) as e:
            return fail("bad_arguments", f"bad arguments for tool {call.name!r}: {_says(e)}. "
                                         f"Usage: {tool.usage}")
        except RecursionError:  # a call built without a depth-capped parser
            return fail("bad_arguments", f"bad arguments for tool {call.name!r}: nested too deeply. Usage: {tool.usage}")
        async with self._semaphore():
            try:
                value = await asyncio.wait_for(self._invoke(tool, args), self.timeout)
            except asyncio.TimeoutError:
                return fail("timeout", f"tool {call.name!r} timed out after {self.timeout:g} s")
            except Exception as e:  # noqa: BLE001 - a tool's failure is an observation, not a crash
                if isinstance(e, _ToolRaised) and e.__cause__ is not None:
                    e = e.__cause__  # type: ignore[assignment]
                logger.debug("tool %r raised", call.name, exc_info=True)
                return fail("exception", f"tool {call.name!r} raised {type(e).__name__}: {_says(e)}")
        try:
            text = self._format(value)
        except RecursionError:
            return fail("exception", f"tool {call.name!r} returned a {type(value).__name__} nested too deeply to "
                                     "show")
        except Exception as e:  # noqa: BLE001 - a broken __str__, an int too long to print: the tool's failure
            return fail("exception", f"tool {call.name!r} returned a {type(value).__name__} that cannot be shown as "
                                     f"text ({type(e).__name__}: {_says(e)})")
        return ToolResult(call, text, True, None, time.monotonic() - start)

    @staticmethod
    async def _invoke(tool: _Tool, args: dict[str, Any]) -> Any:
        try:
            if tool.is_async:
                return await tool.fn(**args)
            value = await asyncio.to_thread(tool.fn, **args)
            return await value if inspect.isawaitable(value) else value
        except (TimeoutError, asyncio.TimeoutError, SystemExit) as e:
            # a tool's own TimeoutError must not look like ours; SystemExit would stop the event loop
            raise _ToolRaised() from e

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(self.max_concurrency)
        return sem

    def _format(self, value: Any) -> str:
        if isinstance(value, str):
            text = value
        elif value is None:
            text = ""
        elif isinstance(value, (dict, list, tuple, int, float, bool)):
            try:
                text = json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError):
                text = str(value)
        else:
            text = str(value)
        return text if self.max_result_chars is None else _clip(text, self.max_result_chars)


class _ToolRaised(Exception):
    """Carries a tool's TimeoutError or SystemExit past ``wait_for`` (as ``__cause__``)."""


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _says(e: BaseException) -> str:
    """What an exception says, cut to :data:`MAX_ERROR_CHARS` (an exception whose ``__str__`` fails says nothing)."""
    try:
        return _clip(str(e), MAX_ERROR_CHARS)
    except Exception:  # noqa: BLE001
        return "(its message cannot be shown)"


def _quote(name: str, limit: int = 100) -> str:
    """``repr(name)``, cut to ``limit`` characters (a model can invent a name of any length)."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters omitted] ...\n{text[-half:]}"
